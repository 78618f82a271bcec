//! What the generated code does at run time: decoding through upcast chains, the transition
//! table and its analysis, typed invalid transitions, and the fixture's target-state check.

use cqrs_core::testing::given;
use cqrs_core::{Aggregate, Command, DecodeError, DomainEvent, InvalidTransition, transitions};
use serde::{Deserialize, Serialize};

// --- events -----------------------------------------------------------------------------------

/// Version 1 of `Registered`: one full name.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RegisteredV1 {
    name: String,
}

/// Version 2: first and last name, no email.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RegisteredV2 {
    first: String,
    last: String,
}

impl From<RegisteredV1> for RegisteredV2 {
    fn from(v1: RegisteredV1) -> Self {
        let (first, last) = v1.name.split_once(' ').unwrap_or((&v1.name, ""));
        RegisteredV2 {
            first: first.to_owned(),
            last: last.to_owned(),
        }
    }
}

impl From<RegisteredV2> for MemberEvent {
    fn from(v2: RegisteredV2) -> Self {
        MemberEvent::Registered {
            first: v2.first,
            last: v2.last,
            email: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum MemberEvent {
    #[event(
        version = 3,
        upcast(from = 1, with = RegisteredV1),
        upcast(from = 2, with = RegisteredV2)
    )]
    Registered {
        first: String,
        last: String,
        email: Option<String>,
    },
    #[event(name = "member.suspended")]
    Suspended {
        reason: String,
    },
    Reinstated,
    Left,
}

#[test]
fn v1_json_decodes_as_the_current_variant_through_a_two_step_chain() {
    let stored_v1 = serde_json::to_vec(&serde_json::json!({ "name": "Ada Lovelace" })).unwrap();
    let decoded = MemberEvent::decode("Registered", 1, &stored_v1).unwrap();
    assert_eq!(
        decoded,
        MemberEvent::Registered {
            first: "Ada".into(),
            last: "Lovelace".into(),
            email: None,
        }
    );
    let stored_v2 = br#"{"first":"Grace","last":"Hopper"}"#;
    assert_eq!(
        MemberEvent::decode("Registered", 2, stored_v2).unwrap(),
        MemberEvent::Registered {
            first: "Grace".into(),
            last: "Hopper".into(),
            email: None,
        }
    );
    // New events are written at the current version and read back unchanged.
    let current = MemberEvent::Registered {
        first: "A".into(),
        last: "B".into(),
        email: Some("a@b".into()),
    };
    assert_eq!(current.schema_version(), 3);
    let body = current.encode().unwrap();
    assert_eq!(
        MemberEvent::decode("Registered", 3, &body).unwrap(),
        current
    );
}

#[test]
fn unknown_types_and_versions_are_typed_errors() {
    let err = MemberEvent::decode("Registered", 4, b"{}").unwrap_err();
    assert!(
        matches!(&err, DecodeError::UnsupportedVersion { event_type, version: 4, readable } if event_type == "Registered" && readable == &[1, 2, 3]),
        "{err:?}"
    );
    // The Rust name of a renamed variant is not its stored name.
    let err = MemberEvent::decode("Suspended", 1, br#"{"reason":"x"}"#).unwrap_err();
    assert!(
        matches!(&err, DecodeError::UnknownEventType { event_type } if event_type == "Suspended"),
        "{err:?}"
    );
    let err = MemberEvent::decode("Registered", 1, br#"{"nom":"x"}"#).unwrap_err();
    assert!(
        matches!(&err, DecodeError::Malformed { version: 1, .. }),
        "{err:?}"
    );
}

#[test]
fn names_versions_and_catalog() {
    let suspended = MemberEvent::Suspended { reason: "r".into() };
    assert_eq!(suspended.event_type(), "member.suspended");
    assert_eq!(suspended.schema_version(), 1);
    assert_eq!(
        MemberEvent::decode("member.suspended", 1, &suspended.encode().unwrap()).unwrap(),
        suspended
    );
    assert_eq!(MemberEvent::Left.encode().unwrap(), b"null");
    let catalog: Vec<_> = MemberEvent::catalog()
        .iter()
        .map(|s| (s.name, s.version, s.readable_versions))
        .collect();
    assert_eq!(
        catalog,
        [
            ("Registered", 3, &[1, 2, 3][..]),
            ("member.suspended", 1, &[1][..]),
            ("Reinstated", 1, &[1][..]),
            ("Left", 1, &[1][..]),
        ]
    );
}

// --- a state machine --------------------------------------------------------------------------

#[derive(Debug, Clone, Command)]
enum MemberCommand {
    Register { first: String, last: String },
    Suspend { reason: String },
    Reinstate,
    Leave,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum MemberError {
    #[error("a member needs a first name")]
    NoName,
    #[error(transparent)]
    InvalidTransition(#[from] InvalidTransition),
}

/// Two planted mistakes: no transition reaches `Archived` (nor leaves it, and it is not
/// terminal), and `Reinstate` is declared to go to `Active` while `evolve` keeps the member
/// suspended.
#[derive(Debug, Clone, Default, PartialEq, Aggregate)]
#[aggregate(command = MemberCommand, event = MemberEvent, error = MemberError)]
enum Member {
    #[default]
    Unregistered,
    Active {
        name: String,
    },
    Suspended,
    #[aggregate(terminal)]
    Gone,
    #[allow(dead_code)]
    Archived,
}

#[transitions]
impl Member {
    #[transition(from = Unregistered, on = Register, to = Active)]
    fn register(&self, first: String, last: String) -> Result<Vec<MemberEvent>, MemberError> {
        if first.is_empty() {
            return Err(MemberError::NoName);
        }
        Ok(vec![MemberEvent::Registered {
            first,
            last,
            email: None,
        }])
    }

    #[transition(from = Active, on = Suspend, to = Suspended)]
    fn suspend(&self, reason: String) -> Result<Vec<MemberEvent>, MemberError> {
        Ok(vec![MemberEvent::Suspended { reason }])
    }

    #[transition(from = Suspended, on = Reinstate, to = Active)]
    fn reinstate(&self) -> Result<Vec<MemberEvent>, MemberError> {
        Ok(vec![MemberEvent::Reinstated])
    }

    #[transition(from = [Active, Suspended], on = Leave, to = Gone)]
    fn leave(&self) -> Result<Vec<MemberEvent>, MemberError> {
        Ok(vec![MemberEvent::Left])
    }

    fn evolve(self, event: &MemberEvent) -> Self {
        match event {
            MemberEvent::Registered { first, last, .. } => Member::Active {
                name: format!("{first} {last}"),
            },
            // The planted bug: reinstating leaves the member suspended.
            MemberEvent::Suspended { .. } | MemberEvent::Reinstated => Member::Suspended,
            MemberEvent::Left => Member::Gone,
        }
    }
}

fn registered() -> MemberEvent {
    MemberEvent::Registered {
        first: "Ada".into(),
        last: "L".into(),
        email: None,
    }
}

#[test]
fn an_undeclared_pair_returns_the_typed_invalid_transition() {
    let error = Member::Gone.decide(MemberCommand::Reinstate).unwrap_err();
    assert_eq!(
        error,
        MemberError::InvalidTransition(InvalidTransition {
            aggregate: "Member",
            state: "Gone",
            command: "Reinstate",
        })
    );
    given::<Member>([])
        .when(MemberCommand::Suspend { reason: "r".into() })
        .then_error(MemberError::InvalidTransition(InvalidTransition {
            aggregate: "Member",
            state: "Unregistered",
            command: "Suspend",
        }));
    // Declared pairs run their handler, including its own errors.
    given::<Member>([])
        .when(MemberCommand::Register {
            first: String::new(),
            last: "L".into(),
        })
        .then_error(MemberError::NoName);
}

#[test]
fn declared_transitions_run_their_handlers() {
    given::<Member>([registered()])
        .when(MemberCommand::Leave)
        .then_events([MemberEvent::Left])
        .then_state(Member::Gone);
    given::<Member>([registered(), MemberEvent::Suspended { reason: "r".into() }])
        .when(MemberCommand::Leave)
        .then_state(Member::Gone);
    let active = Member::Active { name: "A B".into() };
    assert_eq!(active.state_name(), "Active");
    assert_eq!(
        active.declared_target(&MemberCommand::Suspend { reason: "r".into() }),
        Some("Suspended")
    );
    assert_eq!(active.declared_target(&MemberCommand::Reinstate), None);
    assert_eq!(Member::command_name(&MemberCommand::Reinstate), "Reinstate");
}

#[test]
fn the_fixture_names_a_transition_whose_events_land_elsewhere() {
    let payload = std::panic::catch_unwind(|| {
        given::<Member>([registered(), MemberEvent::Suspended { reason: "r".into() }])
            .when(MemberCommand::Reinstate);
    })
    .expect_err("the fixture must reject events that miss the declared target");
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("transition `Suspended` --Reinstate--> `Active`"),
        "{message}"
    );
    assert!(message.contains("lead to `Suspended`"), "{message}");
}

#[test]
fn analysis_finds_the_planted_unreachable_state_and_dead_end() {
    let machine = Member::state_machine();
    assert_eq!(machine.initial, "Unregistered");
    assert_eq!(
        machine.commands,
        ["Register", "Suspend", "Reinstate", "Leave"]
    );
    let analysis = machine.analyze();
    assert_eq!(analysis.unreachable, ["Archived"]);
    // Gone is terminal; Archived has no way out either and is not terminal.
    assert_eq!(analysis.dead_ends, ["Archived"]);
    assert!(!analysis.is_clean());
}

#[test]
fn the_table_renders_as_dot() {
    let dot = Member::state_machine().to_dot();
    assert!(dot.starts_with("digraph \"Member\" {"), "{dot}");
    assert!(dot.contains("__start -> \"Unregistered\";"), "{dot}");
    assert!(
        dot.contains("\"Suspended\" -> \"Active\" [label=\"Reinstate\"];"),
        "{dot}"
    );
    assert!(
        dot.contains("\"Gone\" [label=\"Gone\", peripheries=2];"),
        "{dot}"
    );
}

#[test]
fn the_table_is_reachable_through_the_aggregate_trait() {
    // Generic code (the operator CLI's `diagram`) knows only `A: Aggregate`.
    fn table<A: Aggregate>() -> Option<cqrs_core::StateMachine> {
        A::transition_table()
    }
    assert_eq!(table::<Member>(), Some(Member::state_machine()));
    // A hand-written plain aggregate declares no transitions.
    assert_eq!(table::<cqrs_core::doc::Counter>(), None);
}
