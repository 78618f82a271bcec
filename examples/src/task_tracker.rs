//! A multi-tenant task tracker: tasks are created, updated, completed, deleted and restored, by
//! two tenants that share one store.
//!
//! The task is a state machine declared with `#[derive(Aggregate)]` and `#[transitions]`:
//!
//! ```text
//! NotCreated --Create--> Active --Complete--> Completed
//!                        Active --Update----> Active
//!          [Active, Completed] --Delete-----> Deleted --Restore--> Active
//! ```
//!
//! Every event names the task's owner; the tenant rides in every event's metadata and in its
//! stream identity (on JetStream, in the subject `<context>.events.<tenant>.Task.<id>`), so the
//! same task id in two tenants is two different tasks.
//!
//! `Created` is at schema version 2: version 1 called the owner `assignee` and had no priority.
//! A version 1 body still in the store is upcast when it is read.
//!
//! Each tenant has its own board, a projection filtered by tenant ([`EventFilter::tenant`]).
//! The board's read model changed schema once ([`TaskCardV1`] -> [`TaskCard`]); the new one is
//! rebuilt from the whole history.

use crate::host::{BoxError, ProjectionHost, RunningProjection};
use cqrs_core::read_model::apply_once;
use cqrs_core::{
    Aggregate, Command, CommandError, CommandMetadata, DomainEvent, EventFilter, EventStore,
    ExpectedVersion, HandlerError, InvalidTransition, Metadata, NewEvent, Projection,
    ReadModelStore, RecordedEvent, Repository, SerializedEvent, transitions,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The two tenants of the walkthrough.
pub const TENANTS: [&str; 2] = ["acme", "globex"];

/// How urgent a task is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Priority {
    /// Some day.
    Low,
    /// The default, and what every task created before priorities existed has.
    #[default]
    Normal,
    /// Soon.
    High,
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
        })
    }
}

/// What a task is about and who owns it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDetails {
    /// Short description.
    pub title: String,
    /// Who is responsible for it.
    pub owner: String,
    /// How urgent it is.
    pub priority: Priority,
}

/// The task's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Aggregate)]
#[aggregate(command = TaskCommand, event = TaskEvent, error = TaskError)]
pub enum Task {
    /// Nothing happened yet.
    #[default]
    NotCreated,
    /// Open: can be edited, completed or deleted.
    Active(TaskDetails),
    /// Done: can still be deleted.
    Completed(TaskDetails),
    /// In the bin: can be restored, as an open task.
    Deleted(TaskDetails),
}

/// What can be asked of a task.
#[derive(Debug, Clone, PartialEq, Eq, Command)]
pub enum TaskCommand {
    /// Create the task.
    Create {
        /// Short description; not blank.
        title: String,
        /// Who is responsible; not blank.
        owner: String,
        /// How urgent.
        priority: Priority,
    },
    /// Change its title, its owner or both; at least one must change.
    Update {
        /// The new title, if it changes.
        title: Option<String>,
        /// The new owner, if it changes.
        owner: Option<String>,
    },
    /// Mark it done.
    Complete,
    /// Move it to the bin.
    Delete,
    /// Take it out of the bin, open again.
    Restore,
}

/// What happened to a task. Every event names the task's owner at that moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, DomainEvent)]
#[event(json_schema)]
pub enum TaskEvent {
    /// The task was created.
    #[event(version = 2, upcast(from = 1, with = CreatedV1))]
    Created {
        /// Short description.
        title: String,
        /// Who is responsible.
        owner: String,
        /// How urgent.
        priority: Priority,
    },
    /// Its title or owner changed; the event holds both as they are now.
    Updated {
        /// The title after the change.
        title: String,
        /// The owner after the change.
        owner: String,
    },
    /// It was done.
    Completed {
        /// Who owned it.
        owner: String,
    },
    /// It went to the bin.
    Deleted {
        /// Who owned it.
        owner: String,
    },
    /// It came back from the bin, open.
    Restored {
        /// Who owns it.
        owner: String,
    },
}

/// `Created` at schema version 1: the owner was called `assignee`, and there were no priorities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CreatedV1 {
    /// Short description.
    pub title: String,
    /// Who was responsible.
    pub assignee: String,
}

impl From<CreatedV1> for TaskEvent {
    fn from(v1: CreatedV1) -> Self {
        TaskEvent::Created {
            title: v1.title,
            owner: v1.assignee,
            priority: Priority::Normal,
        }
    }
}

/// Why a task refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// A task needs a title.
    #[error("a task needs a title")]
    BlankTitle,
    /// A task needs an owner.
    #[error("a task needs an owner")]
    BlankOwner,
    /// An update that changes nothing.
    #[error("the update changes nothing")]
    NothingToUpdate,
    /// The command makes no sense in the task's state.
    #[error(transparent)]
    InvalidTransition(#[from] InvalidTransition),
}

#[transitions]
impl Task {
    #[transition(from = NotCreated, on = Create, to = Active)]
    fn create(
        &self,
        title: String,
        owner: String,
        priority: Priority,
    ) -> Result<Vec<TaskEvent>, TaskError> {
        let title = not_blank(title, TaskError::BlankTitle)?;
        let owner = not_blank(owner, TaskError::BlankOwner)?;
        Ok(vec![TaskEvent::Created {
            title,
            owner,
            priority,
        }])
    }

    #[transition(from = Active, on = Update, to = Active)]
    fn update(
        &self,
        title: Option<String>,
        owner: Option<String>,
    ) -> Result<Vec<TaskEvent>, TaskError> {
        let current = self.details().cloned().unwrap_or_default();
        let title = match title {
            Some(title) => not_blank(title, TaskError::BlankTitle)?,
            None => current.title.clone(),
        };
        let owner = match owner {
            Some(owner) => not_blank(owner, TaskError::BlankOwner)?,
            None => current.owner.clone(),
        };
        if title == current.title && owner == current.owner {
            return Err(TaskError::NothingToUpdate);
        }
        Ok(vec![TaskEvent::Updated { title, owner }])
    }

    #[transition(from = Active, on = Complete, to = Completed)]
    fn complete(&self) -> Result<Vec<TaskEvent>, TaskError> {
        Ok(vec![TaskEvent::Completed {
            owner: self.owner(),
        }])
    }

    #[transition(from = [Active, Completed], on = Delete, to = Deleted)]
    fn delete(&self) -> Result<Vec<TaskEvent>, TaskError> {
        Ok(vec![TaskEvent::Deleted {
            owner: self.owner(),
        }])
    }

    #[transition(from = Deleted, on = Restore, to = Active)]
    fn restore(&self) -> Result<Vec<TaskEvent>, TaskError> {
        Ok(vec![TaskEvent::Restored {
            owner: self.owner(),
        }])
    }

    fn evolve(self, event: &TaskEvent) -> Self {
        match (self, event) {
            (
                _,
                TaskEvent::Created {
                    title,
                    owner,
                    priority,
                },
            ) => Task::Active(TaskDetails {
                title: title.clone(),
                owner: owner.clone(),
                priority: *priority,
            }),
            (Task::Active(details), TaskEvent::Updated { title, owner }) => {
                Task::Active(TaskDetails {
                    title: title.clone(),
                    owner: owner.clone(),
                    ..details
                })
            }
            (Task::Active(details), TaskEvent::Completed { .. }) => Task::Completed(details),
            (Task::Active(details) | Task::Completed(details), TaskEvent::Deleted { .. }) => {
                Task::Deleted(details)
            }
            (Task::Deleted(details), TaskEvent::Restored { .. }) => Task::Active(details),
            // Events are facts: one that does not fit the state leaves it unchanged.
            (state, _) => state,
        }
    }
}

impl Task {
    /// Title, owner and priority, once created.
    pub fn details(&self) -> Option<&TaskDetails> {
        match self {
            Task::NotCreated => None,
            Task::Active(details) | Task::Completed(details) | Task::Deleted(details) => {
                Some(details)
            }
        }
    }

    /// The owner; empty before the task is created (no handler that needs it runs then).
    fn owner(&self) -> String {
        self.details().map(|d| d.owner.clone()).unwrap_or_default()
    }
}

fn not_blank(value: String, error: TaskError) -> Result<String, TaskError> {
    if value.trim().is_empty() {
        Err(error)
    } else {
        Ok(value)
    }
}

impl TaskEvent {
    /// The owner the event names.
    pub fn owner(&self) -> &str {
        match self {
            TaskEvent::Created { owner, .. }
            | TaskEvent::Updated { owner, .. }
            | TaskEvent::Completed { owner }
            | TaskEvent::Deleted { owner }
            | TaskEvent::Restored { owner } => owner,
        }
    }
}

/// Where a task stands on a board.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskStatus {
    /// To do.
    #[default]
    Open,
    /// Done.
    Done,
    /// In the bin.
    Deleted,
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Open => "open",
            Self::Done => "done",
            Self::Deleted => "deleted",
        })
    }
}

/// A card of a tenant's board, read model version 1.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCardV1 {
    /// Title.
    pub title: String,
    /// Owner.
    pub owner: String,
    /// Status.
    pub status: TaskStatus,
}

/// A card of a tenant's board, read model version 2: version 1 plus the priority and the number
/// of edits. Old events carry what both need, so the cards are rebuilt from history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCard {
    /// Title.
    pub title: String,
    /// Owner.
    pub owner: String,
    /// Status.
    pub status: TaskStatus,
    /// Priority (new in version 2).
    pub priority: Priority,
    /// How many times the title or owner changed (new in version 2).
    pub edits: u32,
}

/// The tasks of one tenant, as read model version 1: a projection filtered by tenant.
#[derive(Debug, Clone)]
pub struct TaskBoardV1<M> {
    tenant: String,
    name: String,
    /// The cards, one per task id.
    pub model: M,
}

impl<M> TaskBoardV1<M> {
    /// The board of `tenant`, kept in `model`.
    pub fn new(tenant: &str, model: M) -> Self {
        Self {
            tenant: tenant.to_owned(),
            name: board_name(tenant),
            model,
        }
    }
}

impl<M: ReadModelStore<TaskCardV1>> Projection for TaskBoardV1<M> {
    fn name(&self) -> &str {
        &self.name
    }

    fn filter(&self) -> EventFilter {
        board_filter(&self.tenant)
    }

    async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        let task: TaskEvent = event.payload.decode()?;
        apply_once(&self.model, &event.aggregate_id, event.position, |old| {
            let mut card = old.unwrap_or_default();
            task.owner().clone_into(&mut card.owner);
            match &task {
                TaskEvent::Created { title, .. } | TaskEvent::Updated { title, .. } => {
                    card.title.clone_from(title);
                }
                TaskEvent::Completed { .. } => card.status = TaskStatus::Done,
                TaskEvent::Deleted { .. } => card.status = TaskStatus::Deleted,
                TaskEvent::Restored { .. } => card.status = TaskStatus::Open,
            }
            card
        })
        .await?;
        Ok(())
    }
}

/// The tasks of one tenant, as read model version 2. Same projection name as version 1: on
/// JetStream, rebuilding it deletes its checkpoints and starts over from the first event.
#[derive(Debug, Clone)]
pub struct TaskBoard<M> {
    tenant: String,
    name: String,
    /// The cards, one per task id.
    pub model: M,
}

impl<M> TaskBoard<M> {
    /// The board of `tenant`, kept in `model`.
    pub fn new(tenant: &str, model: M) -> Self {
        Self {
            tenant: tenant.to_owned(),
            name: board_name(tenant),
            model,
        }
    }
}

impl<M: ReadModelStore<TaskCard>> Projection for TaskBoard<M> {
    fn name(&self) -> &str {
        &self.name
    }

    fn filter(&self) -> EventFilter {
        board_filter(&self.tenant)
    }

    async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        let task: TaskEvent = event.payload.decode()?;
        apply_once(&self.model, &event.aggregate_id, event.position, |old| {
            let mut card = old.unwrap_or_default();
            task.owner().clone_into(&mut card.owner);
            match &task {
                TaskEvent::Created {
                    title, priority, ..
                } => {
                    card.title.clone_from(title);
                    card.priority = *priority;
                }
                TaskEvent::Updated { title, .. } => {
                    card.title.clone_from(title);
                    card.edits += 1;
                }
                TaskEvent::Completed { .. } => card.status = TaskStatus::Done,
                TaskEvent::Deleted { .. } => card.status = TaskStatus::Deleted,
                TaskEvent::Restored { .. } => card.status = TaskStatus::Open,
            }
            card
        })
        .await?;
        Ok(())
    }
}

/// The projection name of `tenant`'s board, the same for every read-model version.
fn board_name(tenant: &str) -> String {
    format!("task-board-{tenant}")
}

/// Tasks of `tenant` only.
fn board_filter(tenant: &str) -> EventFilter {
    EventFilter::all().aggregate_type(Task::TYPE).tenant(tenant)
}

/// What the walkthrough saw, for checks beyond its transcript.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskTrackerReport {
    /// The version 1 body written the way last year's build wrote it.
    pub legacy_stored: Option<SerializedEvent>,
    /// How that event reads today.
    pub legacy_read: Option<TaskEvent>,
    /// Refused commands: `tenant/task command: reason`.
    pub refused: Vec<String>,
    /// Per tenant, the board in read model version 1, by task id.
    pub boards_v1: BTreeMap<String, BTreeMap<String, TaskCardV1>>,
    /// Per tenant, the board in read model version 2, rebuilt from history, then kept live.
    pub boards_v2: BTreeMap<String, BTreeMap<String, TaskCard>>,
}

/// One step of the walkthrough: `(tenant, task id, acting user, command)`.
type Step = (&'static str, &'static str, &'static str, TaskCommand);

/// The `task_tracker` example's walkthrough, written to `out`, on any [`ProjectionHost`] (the
/// store should be empty).
///
/// Starts one board per tenant, stores a task the way an old build wrote it (a version 1
/// `Created`) and reads it back upcast, runs commands for both tenants (some refused), prints
/// both boards, then changes the board's read-model schema and rebuilds it from history, and
/// shows the rebuilt board following new events live.
pub async fn demo<H: ProjectionHost>(
    host: &H,
    out: &mut impl fmt::Write,
) -> Result<TaskTrackerReport, BoxError> {
    let mut report = TaskTrackerReport::default();
    let tasks = Repository::<Task, H::Store>::new(host.store().clone()).with_conflict_retries(3);

    // One board per tenant, live from the first event.
    let mut boards = Vec::new();
    for tenant in TENANTS {
        let model = host
            .model::<TaskCardV1>(&format!("task-board-{tenant}-v1"))
            .await?;
        let board = host.spawn(TaskBoardV1::new(tenant, model.clone())).await?;
        boards.push((tenant, model, board));
    }

    writeln!(out, "== a version 1 event, upcast on read ==")?;
    let mut head = store_legacy_task(&tasks, out, &mut report).await?;

    writeln!(out, "== two tenants ==")?;
    head = head.max(run_steps(&tasks, steps(), out, &mut report).await?);

    writeln!(out, "== per-tenant boards (read model v1) ==")?;
    for (tenant, model, board) in boards {
        board.wait_for(head).await?;
        // The schema changes next: this version of the board stops here.
        board.stop().await?;
        let cards = cards(&model).await?;
        writeln!(out, "board {tenant}:")?;
        for (id, card) in &cards {
            writeln!(
                out,
                "  {id} {:<7} {:?} owner={}",
                card.status, card.title, card.owner
            )?;
        }
        report.boards_v1.insert(tenant.to_owned(), cards);
    }

    writeln!(
        out,
        "== read model v2 (+priority, +edits), rebuilt from history =="
    )?;
    let mut boards = Vec::new();
    for tenant in TENANTS {
        let model = host
            .model::<TaskCard>(&format!("task-board-{tenant}-v2"))
            .await?;
        let board = host.rebuild(TaskBoard::new(tenant, model.clone())).await?;
        board.wait_for(head).await?;
        let cards = cards(&model).await?;
        writeln!(out, "board {tenant}:")?;
        for (id, card) in &cards {
            writeln!(out, "  {}", card_line(id, card))?;
        }
        boards.push((tenant, model, board));
    }

    // The rebuilt boards follow new events live.
    let edit = update(Some("Fix the login bug on mobile"), None);
    head = head.max(run_steps(&tasks, vec![("acme", "t-2", "ann", edit)], out, &mut report).await?);
    for (tenant, model, board) in boards {
        board.wait_for(head).await?;
        board.stop().await?;
        let cards = cards(&model).await?;
        if let Some(card) = cards.get("t-2").filter(|_| tenant == "acme") {
            writeln!(out, "live: board {tenant}: {}", card_line("t-2", card))?;
        }
        report.boards_v2.insert(tenant.to_owned(), cards);
    }
    Ok(report)
}

/// Stores task `acme/t-0` the way last year's build wrote it — `Created` at schema version 1,
/// appended as raw bytes with the store's own API — and reads it back through the repository,
/// upcast. Returns its store position.
async fn store_legacy_task<S: EventStore + Clone>(
    tasks: &Repository<Task, S>,
    out: &mut impl fmt::Write,
    report: &mut TaskTrackerReport,
) -> Result<u64, BoxError> {
    let legacy = SerializedEvent {
        event_type: "Created".to_owned(),
        schema_version: 1,
        data: br#"{"title":"Migrate the wiki","assignee":"carol"}"#.to_vec(),
    };
    let stream = cqrs_core::StreamId::of::<Task>("t-0", Some("acme"));
    let mut metadata = Metadata::standalone();
    metadata.tenant = Some("acme".to_owned());
    metadata.actor = Some("system:import".to_owned());
    let event = NewEvent::new(cqrs_core::metadata::new_id(), legacy.clone(), metadata);
    let committed = tasks
        .store()
        .append(&stream, ExpectedVersion::NoStream, vec![event], None)
        .await?;
    writeln!(
        out,
        "stored:  {stream} {} schema v{} {}",
        legacy.event_type,
        legacy.schema_version,
        String::from_utf8_lossy(&legacy.data)
    )?;
    let history = tasks.history(&stream, 1).await?;
    let read = history.first().ok_or("the version 1 event is missing")?;
    writeln!(
        out,
        "read as: {stream} v{} {:?} (schema v{})",
        read.version,
        read.payload,
        read.payload.schema_version()
    )?;
    report.legacy_stored = Some(legacy);
    report.legacy_read = Some(read.payload.clone());
    Ok(committed.stream_position().map_or(0, |p| p.position))
}

/// Runs `steps`, printing each command's events or why it was refused. Returns the store
/// position of the last event written (0: none).
async fn run_steps<S: EventStore + Clone>(
    tasks: &Repository<Task, S>,
    steps: Vec<Step>,
    out: &mut impl fmt::Write,
    report: &mut TaskTrackerReport,
) -> Result<u64, BoxError> {
    let mut head = 0;
    for (tenant, id, user, command) in steps {
        let name = Task::command_name(&command);
        let metadata = CommandMetadata::root()
            .with_tenant(tenant)
            .with_actor(format!("user:{user}"));
        match tasks.execute(id, command, metadata).await {
            Ok(events) => {
                for event in events {
                    head = head.max(event.position);
                    writeln!(out, "{tenant}/{id} v{} {:?}", event.version, event.payload)?;
                }
            }
            Err(error) => {
                let line = format!("{tenant}/{id} {name}: {}", refusal(error)?);
                writeln!(out, "refused: {line}")?;
                report.refused.push(line);
            }
        }
    }
    Ok(head)
}

/// The commands of the walkthrough, for both tenants.
fn steps() -> Vec<Step> {
    vec![
        (
            "acme",
            "t-1",
            "ann",
            create("Write the release notes", "ann", Priority::High),
        ),
        (
            "acme",
            "t-2",
            "bob",
            create("Fix the login bug", "bob", Priority::Normal),
        ),
        (
            "globex",
            "t-1",
            "dan",
            create("Order office chairs", "dan", Priority::Low),
        ),
        (
            "acme",
            "t-1",
            "ann",
            update(Some("Write the 1.0 release notes"), None),
        ),
        ("acme", "t-1", "ann", TaskCommand::Complete),
        ("acme", "t-2", "bob", update(None, Some("ann"))),
        ("acme", "t-2", "ann", TaskCommand::Delete),
        ("acme", "t-2", "ann", TaskCommand::Restore),
        ("acme", "t-0", "carol", TaskCommand::Complete),
        ("globex", "t-1", "dan", update(None, Some("erin"))),
        // Refused: a completed task is not edited, an update must change something, and a
        // tenant does not reach another's tasks (globex has no t-2).
        (
            "acme",
            "t-1",
            "ann",
            update(Some("Write the 2.0 release notes"), None),
        ),
        ("acme", "t-2", "ann", update(None, Some("ann"))),
        ("globex", "t-2", "erin", TaskCommand::Complete),
    ]
}

fn create(title: &str, owner: &str, priority: Priority) -> TaskCommand {
    TaskCommand::Create {
        title: title.to_owned(),
        owner: owner.to_owned(),
        priority,
    }
}

fn update(title: Option<&str>, owner: Option<&str>) -> TaskCommand {
    TaskCommand::Update {
        title: title.map(str::to_owned),
        owner: owner.map(str::to_owned),
    }
}

fn card_line(id: &str, card: &TaskCard) -> String {
    format!(
        "{id} {:<7} {:?} owner={} priority={} edits={}",
        card.status, card.title, card.owner, card.priority, card.edits
    )
}

/// Every card of a board, by task id.
async fn cards<V: Clone + Send + Sync + 'static>(
    model: &impl ReadModelStore<V>,
) -> Result<BTreeMap<String, V>, BoxError> {
    Ok(model
        .entries()
        .await?
        .into_iter()
        .map(|(id, entry)| (id, entry.value))
        .collect())
}

/// A refused command in a line, or the error when the store failed.
fn refusal(error: CommandError<TaskError>) -> Result<String, BoxError> {
    match error {
        CommandError::Rejected(reason) => Ok(reason.to_string()),
        CommandError::InvalidTransition(InvalidTransition { state, command, .. }) => {
            Ok(format!("no transition for `{command}` in state `{state}`"))
        }
        other => Err(other.into()),
    }
}
