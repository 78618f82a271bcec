//! Process managers (sagas): workflows across aggregates. Events in, commands out, with state
//! kept per correlation id.
//!
//! Every command a process manager issues carries `causation_id` = the triggering event's id and
//! that event's correlation id, and a command id derived from (process manager, event id, index):
//! when the event is delivered again, the same command ids are issued and idempotency makes the
//! effect happen once.

use crate::aggregate::Aggregate;
use crate::envelope::RecordedEvent;
use crate::error::CommandError;
use crate::metadata::{CommandMetadata, SeenPosition};
use crate::projection::{HandlerError, Projection};
use crate::read_model::ReadModelStore;
use crate::repository::Repository;
use crate::store::EventStore;
use crate::stream::{EventFilter, StreamId};
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
///
/// Two are shipped for [`Targeted`] commands: a [`Repository`] dispatches to its aggregates in
/// process, and `cqrs_nats::command::CommandClient` through the command service.
pub trait CommandDispatcher<C>: Send + Sync + 'static {
    /// Sends `command` with `metadata`; succeeds once the command is applied or known to be a
    /// duplicate. A refusal — a domain rejection or a command the aggregate's state has no
    /// transition for ([`CommandError::is_refusal`](crate::CommandError::is_refusal)) — is a
    /// success for the dispatcher (the process manager sees its outcome as events, or not at
    /// all); transport and store failures are errors and are retried.
    fn dispatch(
        &self,
        command: C,
        metadata: CommandMetadata,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// A command for one aggregate instance of type `A`: what a process manager issues. The
/// aggregate type is `A`'s; the tenant is the flow's (the triggering event's) unless
/// [`in_tenant`](Self::in_tenant) names another.
///
/// A [`Repository<A, _>`](Repository) dispatches it in process, and
/// `cqrs_nats::command::CommandClient` through the command service. A process manager that
/// commands several aggregate types issues an enum of `Targeted<..>` variants and dispatches
/// each to its own.
///
/// ```
/// use cqrs_core::doc::{Counter, CounterCommand};
/// use cqrs_core::process::Targeted;
///
/// let add = Targeted::<Counter>::new("c-1", CounterCommand::Add(2));
/// assert_eq!(add.stream(Some("acme")).to_string(), "acme/Counter/c-1");
/// assert_eq!(add.in_tenant("other").stream(Some("acme")).to_string(), "other/Counter/c-1");
/// ```
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(bound(
    serialize = "A::Command: serde::Serialize",
    deserialize = "A::Command: serde::de::DeserializeOwned"
))]
pub struct Targeted<A: Aggregate> {
    /// The aggregate's id.
    pub aggregate_id: String,
    /// The command.
    pub command: A::Command,
    /// The aggregate's tenant, when it is not the flow's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl<A: Aggregate> Targeted<A> {
    /// `command` for aggregate `aggregate_id`, in the flow's tenant.
    pub fn new(aggregate_id: impl Into<String>, command: A::Command) -> Self {
        Self {
            aggregate_id: aggregate_id.into(),
            command,
            tenant: None,
        }
    }

    /// The aggregate lives in `tenant`, not in the flow's.
    #[must_use]
    pub fn in_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// The aggregate's stream, for a flow in `flow_tenant`.
    pub fn stream(&self, flow_tenant: Option<&str>) -> StreamId {
        StreamId::of::<A>(
            self.aggregate_id.as_str(),
            self.tenant.as_deref().or(flow_tenant),
        )
    }

    /// `metadata` with this command's tenant, if it names one.
    pub fn metadata(&self, mut metadata: CommandMetadata) -> CommandMetadata {
        if let Some(tenant) = &self.tenant {
            metadata.tenant = Some(tenant.clone());
        }
        metadata
    }
}

impl<A: Aggregate> Clone for Targeted<A> {
    fn clone(&self) -> Self {
        Self {
            aggregate_id: self.aggregate_id.clone(),
            command: self.command.clone(),
            tenant: self.tenant.clone(),
        }
    }
}

impl<A: Aggregate> Debug for Targeted<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Targeted")
            .field("aggregate_type", &A::TYPE)
            .field("aggregate_id", &self.aggregate_id)
            .field("command", &self.command)
            .field("tenant", &self.tenant)
            .finish()
    }
}

impl<A: Aggregate> PartialEq for Targeted<A>
where
    A::Command: PartialEq,
{
    fn eq(&self, other: &Self) -> bool {
        self.aggregate_id == other.aggregate_id
            && self.command == other.command
            && self.tenant == other.tenant
    }
}

/// In process: a process manager's command runs through the repository. A refusal counts as
/// delivered; a store failure (a conflict the repository's retries did not settle included) is
/// returned, so the runner retries the event — without using up its attempts while the failure
/// is retryable ([`CommandError::is_retryable`]).
impl<A: Aggregate, S: EventStore> CommandDispatcher<Targeted<A>> for Repository<A, S> {
    async fn dispatch(
        &self,
        target: Targeted<A>,
        metadata: CommandMetadata,
    ) -> Result<(), HandlerError> {
        let metadata = target.metadata(metadata);
        let outcome = self
            .execute(&target.aggregate_id, target.command, metadata)
            .await;
        dispatched::<A, _, _>(
            &target.aggregate_id,
            outcome,
            CommandError::is_refusal,
            CommandError::is_retryable,
        )
    }
}

/// What a dispatcher of [`Targeted`] commands answers for `outcome`: delivered when the command
/// was applied or refused (`is_refusal`; sending it again would change nothing, so the refusal
/// is only logged), an error the runner retries otherwise — a [transient](HandlerError::transient)
/// one when `is_retryable` says sending the command again later may succeed (the store or the
/// service unavailable, an unknown outcome), so that an outage parks nothing. The shipped
/// dispatchers use it.
pub fn dispatched<A: Aggregate, T, E>(
    aggregate_id: &str,
    outcome: Result<T, E>,
    is_refusal: fn(&E) -> bool,
    is_retryable: fn(&E) -> bool,
) -> Result<(), HandlerError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match outcome {
        Ok(_) => Ok(()),
        Err(refusal) if is_refusal(&refusal) => {
            tracing::debug!(
                aggregate_type = A::TYPE,
                aggregate_id,
                %refusal,
                "the process manager's command was refused"
            );
            Ok(())
        }
        Err(error) if is_retryable(&error) => Err(HandlerError::from_error(error).transient()),
        Err(error) => Err(HandlerError::from_error(error)),
    }
}

/// The commands a process manager issues for one event, with their metadata: the event's
/// correlation id and tenant, `causation_id` = the event id, a command id derived from (process
/// manager, event id, index), actor `process:<NAME>`, and the event's position as
/// [`seen_position`](CommandMetadata::seen_position).
pub fn reactions<PM: ProcessManager>(
    event: &RecordedEvent,
    commands: Vec<PM::Command>,
) -> Vec<(PM::Command, CommandMetadata)> {
    (0u32..)
        .zip(commands)
        .map(|(index, command)| {
            // The process manager, not the user behind the triggering event, issues it; and
            // it has seen the store up to that event, so no state without it may refuse.
            let mut metadata =
                CommandMetadata::reaction(PM::NAME, &event.metadata, event.event_id, index)
                    .with_actor(format!("process:{}", PM::NAME));
            metadata.seen_position = SeenPosition::of(event);
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
        let span = tracing::info_span!(
            "cqrs.react",
            process = PM::NAME,
            event_id = %event.event_id,
            position = event.position,
            correlation_id = %event.metadata.correlation_id,
        );
        crate::trace::follow(&span, event.metadata.trace.as_deref());
        let traceparent = crate::trace::traceparent(&span);
        tracing::Instrument::instrument(self.react_to(event, traceparent), span).await
    }
}

impl<PM, S, D> ProcessManagerProjection<PM, S, D>
where
    PM: ProcessManager,
    S: ReadModelStore<PM::State>,
    D: CommandDispatcher<PM::Command>,
{
    /// Reacts to `event`; follow-up commands carry `traceparent` (the reaction's span) when
    /// there is one, else the event's.
    async fn react_to(
        &self,
        event: &RecordedEvent,
        traceparent: Option<String>,
    ) -> Result<(), HandlerError> {
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
        for (command, mut metadata) in reactions::<PM>(event, commands) {
            if traceparent.is_some() {
                metadata.trace.clone_from(&traceparent);
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::SerializedEvent;
    use crate::metadata::{Metadata, new_id};
    use std::sync::Arc;

    struct Echo;

    impl ProcessManager for Echo {
        const NAME: &'static str = "echo";
        type State = ();
        type Command = ();

        fn filter(&self) -> EventFilter {
            EventFilter::all()
        }

        fn react(&self, (): (), _: &RecordedEvent) -> Result<((), Vec<()>), HandlerError> {
            Ok(((), vec![()]))
        }
    }

    fn event_from(store: Option<&str>) -> RecordedEvent {
        RecordedEvent {
            event_id: new_id(),
            aggregate_type: "Order".to_owned(),
            aggregate_id: "o-1".to_owned(),
            version: 3,
            position: 42,
            recorded_at: time::OffsetDateTime::UNIX_EPOCH,
            metadata: Metadata::standalone(),
            payload: SerializedEvent {
                event_type: "Paid".to_owned(),
                schema_version: 1,
                data: b"{}".to_vec(),
            },
            erased: Vec::new(),
            store: store.map(Arc::from),
        }
    }

    #[test]
    fn a_reaction_has_seen_the_store_up_to_its_event() {
        let event = event_from(Some("EVENTS_SALES"));
        let issued = reactions::<Echo>(&event, vec![()]);
        assert_eq!(issued.len(), 1);
        let metadata = &issued[0].1;
        assert_eq!(
            metadata.seen_position,
            Some(SeenPosition {
                store: "EVENTS_SALES".to_owned(),
                position: 42
            })
        );
        assert_eq!(metadata.causation_id, Some(event.event_id));
        // A reader that does not name its store gives no floor: its positions could be anyone's.
        let unnamed = reactions::<Echo>(&event_from(None), vec![()]);
        assert_eq!(unnamed[0].1.seen_position, None);
    }
}
