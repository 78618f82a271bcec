//! Process managers (sagas): workflows across aggregates. Events in, commands out, with state
//! kept per correlation id.
//!
//! Every command a process manager issues carries `causation_id` = the triggering event's id and
//! that event's correlation id, and a command id derived from (process manager, event id, index):
//! when the event is delivered again, the same command ids are issued and idempotency makes the
//! effect happen once.

use crate::envelope::RecordedEvent;
use crate::metadata::CommandMetadata;
use crate::projection::{HandlerError, Projection};
use crate::read_model::ReadModelStore;
use crate::stream::EventFilter;
use std::fmt::Debug;
use std::future::Future;

/// A workflow that reacts to events by issuing commands.
pub trait ProcessManager: Send + Sync + 'static {
    /// Stable name: its checkpoint, and part of every command id it derives.
    const NAME: &'static str;
    /// The state of one flow (one correlation id).
    type State: Default + Clone + Debug + Send + Sync + 'static;
    /// The commands it issues.
    type Command: Clone + Debug + Send + Sync + 'static;

    /// The events it listens to.
    fn filter(&self) -> EventFilter;

    /// Pure: the flow's next state and the commands to issue, given its state and an event.
    fn react(
        &self,
        state: Self::State,
        event: &RecordedEvent,
    ) -> Result<(Self::State, Vec<Self::Command>), HandlerError>;
}

/// Delivers the commands of process managers: to a repository in-process, or over NATS.
pub trait CommandDispatcher<C>: Send + Sync + 'static {
    /// Sends `command` with `metadata`; succeeds once the command is applied or known to be a
    /// duplicate. A domain rejection is a success for the dispatcher (the process manager sees
    /// its outcome as events, or not at all); transport failures are errors and are retried.
    fn dispatch(
        &self,
        command: C,
        metadata: CommandMetadata,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// The commands a process manager issues for one event, with their metadata: the event's
/// correlation id and tenant, `causation_id` = the event id, a command id derived from (process
/// manager, event id, index), and actor `process:<NAME>`.
pub fn reactions<PM: ProcessManager>(
    event: &RecordedEvent,
    commands: Vec<PM::Command>,
) -> Vec<(PM::Command, CommandMetadata)> {
    (0u32..)
        .zip(commands)
        .map(|(index, command)| {
            // The process manager, not the user behind the triggering event, issues it.
            let metadata =
                CommandMetadata::reaction(PM::NAME, &event.metadata, event.event_id, index)
                    .with_actor(format!("process:{}", PM::NAME));
            (command, metadata)
        })
        .collect()
}

/// A process manager run as a projection: state per correlation id in `states`, commands sent
/// through `dispatcher`.
#[derive(Debug)]
pub struct ProcessManagerProjection<PM, S, D> {
    manager: PM,
    states: S,
    dispatcher: D,
}

impl<PM, S, D> ProcessManagerProjection<PM, S, D> {
    /// Runs `manager` with flow states in `states`, sending commands through `dispatcher`.
    pub fn new(manager: PM, states: S, dispatcher: D) -> Self {
        Self {
            manager,
            states,
            dispatcher,
        }
    }

    /// The flow states.
    pub fn states(&self) -> &S {
        &self.states
    }
}

impl<PM, S, D> Projection for ProcessManagerProjection<PM, S, D>
where
    PM: ProcessManager,
    S: ReadModelStore<PM::State>,
    D: CommandDispatcher<PM::Command>,
{
    fn name(&self) -> &str {
        PM::NAME
    }

    fn filter(&self) -> EventFilter {
        self.manager.filter()
    }

    async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        let key = event.metadata.correlation_id.to_string();
        let current = self.states.get(&key).await?;
        let (state, revision) = match current {
            Some(entry) if entry.position >= event.position => return Ok(()),
            Some(entry) => (entry.value, Some(entry.revision)),
            None => (PM::State::default(), None),
        };
        let (next, commands) = self.manager.react(state, event)?;
        // Commands first, state second: after a crash in between, the event is delivered again
        // and re-issues the same command ids, which idempotency absorbs.
        for (command, metadata) in reactions::<PM>(event, commands) {
            tracing::debug!(
                process = PM::NAME,
                command_id = %metadata.command_id,
                causation_id = %event.event_id,
                correlation_id = %metadata.correlation_id,
                ?command,
                "dispatching"
            );
            self.dispatcher.dispatch(command, metadata).await?;
        }
        self.states
            .put(&key, next, event.position, revision)
            .await?;
        Ok(())
    }
}
