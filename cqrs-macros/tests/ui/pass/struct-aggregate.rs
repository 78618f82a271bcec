//! A plain (non state-machine) aggregate: a struct state, `decide` and `evolve` by hand.
use cqrs_core::{Aggregate, DomainEvent, transitions};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum CounterEvent {
    Added { amount: u64 },
}

#[derive(Debug, Clone)]
enum CounterCommand {
    Add(u64),
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("adding zero changes nothing")]
struct Zero;

#[derive(Debug, Clone, Default, PartialEq, Aggregate)]
#[aggregate(command = CounterCommand, event = CounterEvent, error = Zero)]
struct Counter {
    value: u64,
}

#[transitions]
impl Counter {
    pub fn decide(&self, command: CounterCommand) -> Result<Vec<CounterEvent>, Zero> {
        match command {
            CounterCommand::Add(0) => Err(Zero),
            CounterCommand::Add(amount) => Ok(vec![CounterEvent::Added { amount }]),
        }
    }

    fn evolve(self, event: &CounterEvent) -> Self {
        match event {
            CounterEvent::Added { amount } => Counter { value: self.value + amount },
        }
    }

    fn doubled(&self) -> u64 {
        self.value * 2
    }
}

fn main() {
    assert_eq!(Counter::TYPE, "Counter");
    let (counter, events) = Counter::default().transition(CounterCommand::Add(2)).unwrap();
    assert_eq!(counter.doubled(), 4);
    assert_eq!(events, [CounterEvent::Added { amount: 2 }]);
    assert_eq!(counter.decide(CounterCommand::Add(0)), Err(Zero));
    assert_eq!(counter.state_name(), "Counter");
    assert_eq!(counter.declared_target(&CounterCommand::Add(1)), None);
}
