//! Process managers on JetStream: correlation and causation across three hops.

use super::support::*;
use cqrs_core::doc::{Counter, CounterCommand, CounterEvent};
use cqrs_core::read_model::InMemoryReadModelStore;
use cqrs_core::{
    CommandDispatcher, CommandMetadata, EventFilter, HandlerError, ProcessManager,
    ProcessManagerProjection, ReadModelStore, RecordedEvent, Repository, StreamId,
};
use cqrs_nats::{JetStreamEventStore, JetStreamProjectionRunner, KvReadModelStore};
use cqrs_tests::jetstream as fixture;
use std::time::Duration;

/// Bonus workflow: Added(1) -> Add(100); Added(100) -> Add(10).
struct Bonus;

impl ProcessManager for Bonus {
    const NAME: &'static str = "bonus";
    type State = u32;
    type Command = (String, CounterCommand);

    fn filter(&self) -> EventFilter {
        EventFilter::all().aggregate_type("Counter")
    }

    fn react(
        &self,
        steps: u32,
        event: &RecordedEvent,
    ) -> Result<(u32, Vec<(String, CounterCommand)>), HandlerError> {
        let id = event.aggregate_id.clone();
        Ok(match event.payload.decode::<CounterEvent>()? {
            CounterEvent::Added { amount: 1 } => (steps + 1, vec![(id, CounterCommand::Add(100))]),
            CounterEvent::Added { amount: 100 } => (steps + 1, vec![(id, CounterCommand::Add(10))]),
            CounterEvent::Added { .. } => (steps, vec![]),
        })
    }
}

/// Sends commands to the counter repository on JetStream.
struct ToRepository(Repository<Counter, JetStreamEventStore>);

impl CommandDispatcher<(String, CounterCommand)> for ToRepository {
    async fn dispatch(
        &self,
        (id, command): (String, CounterCommand),
        metadata: CommandMetadata,
    ) -> Result<(), HandlerError> {
        match self.0.execute(&id, command, metadata).await {
            Ok(_) | Err(cqrs_core::CommandError::Rejected(_)) => Ok(()),
            Err(error) => Err(HandlerError::from_error(error)),
        }
    }
}

#[tokio::test]
async fn saga_commands_carry_correlation_and_causation_across_three_hops() {
    let f = fixture().await.unwrap();
    let repo = Repository::<Counter, _>::new(f.store.clone());
    let states = KvReadModelStore::<u32>::open(f.store.jetstream(), "bonus-states", 1)
        .await
        .unwrap();
    let saga = ProcessManagerProjection::new(Bonus, states.clone(), ToRepository(repo.clone()));
    let handle = JetStreamProjectionRunner::spawn(&f.store, saga, config(3))
        .await
        .unwrap();

    let root = CommandMetadata::root()
        .with_tenant("acme")
        .with_actor("user:1");
    repo.execute("c0", CounterCommand::Add(1), root.clone())
        .await
        .unwrap();
    // Add(1) -> Added(1) -> Add(100) -> Added(100) -> Add(10) -> Added(10).
    let stream = StreamId::new("Counter", "c0").with_tenant("acme");
    let deadline = tokio::time::Instant::now() + PATIENT;
    let mut history = Vec::new();
    for _ in 0..1000 {
        history = repo.history(&stream, 1).await.unwrap();
        if history.len() >= 3 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(history.len(), 3, "the saga did not finish");
    handle.wait_for(history[2].position, PATIENT).await.unwrap();
    assert_eq!(
        history
            .iter()
            .map(|e| e.payload.clone())
            .collect::<Vec<_>>(),
        [1, 100, 10].map(|amount| CounterEvent::Added { amount })
    );
    for event in &history {
        assert_eq!(event.metadata.correlation_id, root.correlation_id);
        assert_eq!(event.metadata.tenant.as_deref(), Some("acme"));
    }
    assert_eq!(history[0].metadata.causation_id, Some(root.command_id));
    assert_eq!(history[0].metadata.command_causation_id, None);
    assert_eq!(
        history[1].metadata.command_causation_id,
        Some(history[0].event_id)
    );
    assert_eq!(
        history[2].metadata.command_causation_id,
        Some(history[1].event_id)
    );
    assert_eq!(
        history[1].metadata.command_id,
        Some(
            CommandMetadata::reaction(Bonus::NAME, &history[0].metadata, history[0].event_id, 0)
                .command_id
        )
    );
    assert_eq!(
        history[2].metadata.command_id,
        Some(
            CommandMetadata::reaction(Bonus::NAME, &history[1].metadata, history[1].event_id, 0)
                .command_id
        )
    );
    // The flow's state sits in KV under the correlation id.
    let state = states
        .get(&root.correlation_id.to_string())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((state.value, state.position), (2, history[2].position));
    handle.stop().await.unwrap();

    // Delivering the whole history to the saga again (a rebuild) issues the same command ids:
    // nothing new is written.
    let again = ProcessManagerProjection::new(
        Bonus,
        InMemoryReadModelStore::new(),
        ToRepository(repo.clone()),
    );
    let rebuilt = JetStreamProjectionRunner::rebuild(&f.store, again, config(3))
        .await
        .unwrap();
    rebuilt
        .wait_for(history[2].position, PATIENT)
        .await
        .unwrap();
    assert_eq!(repo.history(&stream, 1).await.unwrap().len(), 3);
    rebuilt.stop().await.unwrap();
}
