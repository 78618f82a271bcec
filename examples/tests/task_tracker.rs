//! The `task_tracker` example: its walkthrough tells the expected story on the in-memory store
//! and on JetStream against a spawned server, and its task machine and event versions hold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cqrs_core::testing::given;
use cqrs_core::{DomainEvent, EventFilter, EventStore, InvalidTransition, SerializedEvent};
use examples::host::{InMemoryHost, JetStreamHost, ProjectionHost};
use examples::task_tracker::{
    Priority, Task, TaskCard, TaskCommand, TaskDetails, TaskError, TaskEvent, TaskStatus,
    TaskTrackerReport, demo,
};
use futures::TryStreamExt;

#[tokio::test]
async fn walkthrough_tells_the_expected_story() {
    let host = InMemoryHost::new();
    let mut out = String::new();
    let report = Box::pin(demo(&host, &mut out)).await.unwrap();
    check_report(&report);
    check_transcript(&out);
    check_stored_events(host.store()).await;
}

#[tokio::test]
async fn walkthrough_runs_on_jetstream() {
    let server = cqrs_test_server::NatsServer::start().await.unwrap();
    let host = JetStreamHost::connect(&server.url(), "tasks")
        .await
        .unwrap();
    let mut out = String::new();
    let report = Box::pin(demo(&host, &mut out)).await.unwrap();
    check_report(&report);
    check_transcript(&out);
    check_stored_events(host.store()).await;
}

fn card(title: &str, owner: &str, status: TaskStatus, priority: Priority, edits: u32) -> TaskCard {
    TaskCard {
        title: title.into(),
        owner: owner.into(),
        status,
        priority,
        edits,
    }
}

/// What the walkthrough saw, on either store.
fn check_report(report: &TaskTrackerReport) {
    // The raw version 1 body reads as today's `Created`.
    assert_eq!(
        report.legacy_stored,
        Some(SerializedEvent {
            event_type: "Created".into(),
            schema_version: 1,
            data: br#"{"title":"Migrate the wiki","assignee":"carol"}"#.to_vec(),
        })
    );
    assert_eq!(
        report.legacy_read,
        Some(TaskEvent::Created {
            title: "Migrate the wiki".into(),
            owner: "carol".into(),
            priority: Priority::Normal,
        })
    );
    assert_eq!(
        report.refused,
        [
            "acme/t-1 Update: no transition for `Update` in state `Completed`",
            "acme/t-2 Update: the update changes nothing",
            "globex/t-2 Complete: no transition for `Complete` in state `NotCreated`",
        ]
    );

    // Each tenant's board holds its own tasks only, though both have a `t-1`.
    let acme_v1 = &report.boards_v1["acme"];
    let globex_v1 = &report.boards_v1["globex"];
    assert_eq!(acme_v1.keys().collect::<Vec<_>>(), ["t-0", "t-1", "t-2"]);
    assert_eq!(globex_v1.keys().collect::<Vec<_>>(), ["t-1"]);
    assert_eq!(acme_v1["t-1"].title, "Write the 1.0 release notes");
    assert_eq!(acme_v1["t-1"].status, TaskStatus::Done);
    assert_eq!(acme_v1["t-2"].status, TaskStatus::Open, "restored");
    assert_eq!(globex_v1["t-1"].title, "Order office chairs");
    assert_eq!(globex_v1["t-1"].owner, "erin");

    // Version 2 of the read model, rebuilt from history (the legacy task included), then live.
    let acme = &report.boards_v2["acme"];
    assert_eq!(
        acme["t-0"],
        card(
            "Migrate the wiki",
            "carol",
            TaskStatus::Done,
            Priority::Normal,
            0
        )
    );
    assert_eq!(
        acme["t-1"],
        card(
            "Write the 1.0 release notes",
            "ann",
            TaskStatus::Done,
            Priority::High,
            1
        )
    );
    assert_eq!(
        acme["t-2"],
        card(
            "Fix the login bug on mobile",
            "ann",
            TaskStatus::Open,
            Priority::Normal,
            2
        )
    );
    assert_eq!(acme.len(), 3);
    let globex = &report.boards_v2["globex"];
    assert_eq!(globex.len(), 1);
    assert_eq!(
        globex["t-1"],
        card(
            "Order office chairs",
            "erin",
            TaskStatus::Open,
            Priority::Low,
            1
        )
    );
}

/// The lines of the transcript that matter.
fn check_transcript(out: &str) {
    let lines: Vec<&str> = out.lines().collect();
    let at = |line: &str| {
        lines
            .iter()
            .position(|l| *l == line)
            .unwrap_or_else(|| panic!("missing line {line:?} in\n{out}"))
    };
    assert_eq!(lines[0], "== a version 1 event, upcast on read ==", "{out}");
    assert_eq!(
        lines[1],
        r#"stored:  acme/Task/t-0 Created schema v1 {"title":"Migrate the wiki","assignee":"carol"}"#
    );
    assert_eq!(
        lines[2],
        r#"read as: acme/Task/t-0 v1 Created { title: "Migrate the wiki", owner: "carol", priority: Normal } (schema v2)"#
    );
    let tenants = at("== two tenants ==");
    let boards = at("== per-tenant boards (read model v1) ==");
    let rebuilt = at("== read model v2 (+priority, +edits), rebuilt from history ==");
    assert!(tenants < boards && boards < rebuilt, "{out}");
    // Both tenants' t-1 are separate tasks, each at version 1.
    at(r#"acme/t-1 v1 Created { title: "Write the release notes", owner: "ann", priority: High }"#);
    at(r#"globex/t-1 v1 Created { title: "Order office chairs", owner: "dan", priority: Low }"#);
    at(r#"acme/t-2 v3 Deleted { owner: "ann" }"#);
    at(r#"acme/t-2 v4 Restored { owner: "ann" }"#);
    at(r#"acme/t-0 v2 Completed { owner: "carol" }"#);
    at("refused: acme/t-1 Update: no transition for `Update` in state `Completed`");
    at("refused: globex/t-2 Complete: no transition for `Complete` in state `NotCreated`");
    // The v1 boards, then the rebuilt v2 boards.
    assert_eq!(
        &lines[boards + 1..rebuilt],
        [
            "board acme:",
            r#"  t-0 done    "Migrate the wiki" owner=carol"#,
            r#"  t-1 done    "Write the 1.0 release notes" owner=ann"#,
            r#"  t-2 open    "Fix the login bug" owner=ann"#,
            "board globex:",
            r#"  t-1 open    "Order office chairs" owner=erin"#,
        ],
        "{out}"
    );
    assert_eq!(
        &lines[rebuilt + 1..],
        [
            "board acme:",
            r#"  t-0 done    "Migrate the wiki" owner=carol priority=normal edits=0"#,
            r#"  t-1 done    "Write the 1.0 release notes" owner=ann priority=high edits=1"#,
            r#"  t-2 open    "Fix the login bug" owner=ann priority=normal edits=1"#,
            "board globex:",
            r#"  t-1 open    "Order office chairs" owner=erin priority=low edits=1"#,
            r#"acme/t-2 v5 Updated { title: "Fix the login bug on mobile", owner: "ann" }"#,
            r#"live: board acme: t-2 open    "Fix the login bug on mobile" owner=ann priority=normal edits=2"#,
        ],
        "{out}"
    );
}

/// Every stored task event names its tenant (metadata and stream) and its owner (body).
async fn check_stored_events(store: &impl EventStore) {
    let events: Vec<_> = store
        .read_all(&EventFilter::all(), 0)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    // The legacy event, ten commands and the edit after the rebuild.
    assert_eq!(events.len(), 12);
    for recorded in &events {
        let tenant = recorded.metadata.tenant.as_deref();
        assert!(matches!(tenant, Some("acme" | "globex")), "{recorded:?}");
        assert_eq!(recorded.stream_id().tenant.as_deref(), tenant);
        let event = recorded.decode::<TaskEvent>().unwrap();
        assert!(!event.payload.owner().is_empty(), "{event:?}");
    }
    // The legacy event is still stored at version 1: upcasting happens on read only.
    assert_eq!(events[0].payload.schema_version, 1);
    assert!(
        events[1..]
            .iter()
            .all(|e| e.payload.event_type != "Created" || e.payload.schema_version == 2)
    );
}

#[test]
fn a_v1_created_event_reads_as_v2() {
    let event = TaskEvent::decode("Created", 1, br#"{"title":"T","assignee":"zoe"}"#).unwrap();
    assert_eq!(
        event,
        TaskEvent::Created {
            title: "T".into(),
            owner: "zoe".into(),
            priority: Priority::Normal,
        }
    );
    assert_eq!(event.schema_version(), 2);
    let created = TaskEvent::catalog()
        .iter()
        .find(|s| s.name == "Created")
        .unwrap();
    assert_eq!(created.readable_versions, &[1, 2]);
}

#[test]
fn the_task_machine_is_well_formed() {
    let machine = Task::state_machine();
    assert_eq!(machine.initial, "NotCreated");
    assert_eq!(
        machine.commands,
        ["Create", "Update", "Complete", "Delete", "Restore"]
    );
    let analysis = machine.analyze();
    assert!(analysis.is_clean(), "{analysis}");
    let mermaid = machine.to_mermaid();
    assert!(
        mermaid.contains("Completed --> Deleted : Delete"),
        "{mermaid}"
    );
    assert!(
        mermaid.contains("Deleted --> Active : Restore"),
        "{mermaid}"
    );
}

fn created() -> TaskEvent {
    TaskEvent::Created {
        title: "Ship it".into(),
        owner: "ann".into(),
        priority: Priority::High,
    }
}

fn details(owner: &str) -> TaskDetails {
    TaskDetails {
        title: "Ship it".into(),
        owner: owner.into(),
        priority: Priority::High,
    }
}

#[test]
fn the_task_rules() {
    given::<Task>([])
        .when(TaskCommand::Create {
            title: " ".into(),
            owner: "ann".into(),
            priority: Priority::Low,
        })
        .then_error(TaskError::BlankTitle);
    given::<Task>([created()])
        .when(TaskCommand::Update {
            title: None,
            owner: Some("bob".into()),
        })
        .then_events([TaskEvent::Updated {
            title: "Ship it".into(),
            owner: "bob".into(),
        }])
        .then_state(Task::Active(details("bob")));
    given::<Task>([created()])
        .when(TaskCommand::Update {
            title: Some("Ship it".into()),
            owner: None,
        })
        .then_error(TaskError::NothingToUpdate);
    // Deleting a completed task and restoring it reopens it.
    given::<Task>([
        created(),
        TaskEvent::Completed {
            owner: "ann".into(),
        },
        TaskEvent::Deleted {
            owner: "ann".into(),
        },
    ])
    .when(TaskCommand::Restore)
    .then_events([TaskEvent::Restored {
        owner: "ann".into(),
    }])
    .then_state(Task::Active(details("ann")));
    given::<Task>([
        created(),
        TaskEvent::Deleted {
            owner: "ann".into(),
        },
    ])
    .when(TaskCommand::Complete)
    .then_error(TaskError::InvalidTransition(InvalidTransition {
        aggregate: "Task",
        state: "Deleted",
        command: "Complete",
    }));
}
