//! The transition table of a state-machine aggregate, as data.
//!
//! `#[derive(Aggregate)]` on a state enum together with `#[transitions]` on its impl block
//! generates `State::state_machine()`, which returns a [`StateMachine`]: the states, the
//! commands, the initial state and every declared transition `from --on--> to`. It renders as a
//! Mermaid `stateDiagram-v2` ([`StateMachine::to_mermaid`]) or Graphviz DOT
//! ([`StateMachine::to_dot`]) and checks itself ([`StateMachine::analyze`]) for states that no
//! transition reaches and for non-terminal states that no transition leaves.
//!
//! ```
//! use cqrs_core::state_machine::{State, StateMachine, Transition};
//!
//! let machine = StateMachine {
//!     aggregate: "Door",
//!     initial: "Open",
//!     states: &[
//!         State { name: "Open", terminal: false },
//!         State { name: "Closed", terminal: false },
//!         State { name: "Welded", terminal: true },
//!     ],
//!     commands: &["Close", "Open", "Weld"],
//!     transitions: &[
//!         Transition { from: "Open", on: "Close", to: "Closed", handler: "close" },
//!         Transition { from: "Closed", on: "Open", to: "Open", handler: "open" },
//!     ],
//! };
//! let analysis = machine.analyze();
//! assert_eq!(analysis.unreachable, ["Welded"]);
//! assert!(analysis.dead_ends.is_empty());
//! assert!(machine.to_mermaid().contains("Open --> Closed : Close"));
//! ```

use std::collections::{BTreeSet, VecDeque};
use std::fmt::{self, Write as _};

/// One state of a state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct State {
    /// The variant name.
    pub name: &'static str,
    /// Whether the state is final on purpose (`#[aggregate(terminal)]`): no transition leaves it
    /// and that is not a mistake.
    pub terminal: bool,
}

/// One declared transition: in state `from`, command `on` is handled by `handler` and its events
/// lead to state `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transition {
    /// Source state.
    pub from: &'static str,
    /// Command variant.
    pub on: &'static str,
    /// Declared target state.
    pub to: &'static str,
    /// Name of the handler method.
    pub handler: &'static str,
}

/// The transition table of a state-machine aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateMachine {
    /// Aggregate type name.
    pub aggregate: &'static str,
    /// The state a new aggregate is in (its `Default`).
    pub initial: &'static str,
    /// Every state, in declaration order.
    pub states: &'static [State],
    /// Every command variant, in the order the transitions first name them.
    pub commands: &'static [&'static str],
    /// Every transition, one per source state, in declaration order.
    pub transitions: &'static [Transition],
}

/// What [`StateMachine::analyze`] found. Both lists empty means the machine is well-formed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Analysis {
    /// States that no sequence of transitions reaches from the initial state.
    pub unreachable: Vec<&'static str>,
    /// States that no transition leaves and that are not marked terminal.
    pub dead_ends: Vec<&'static str>,
}

impl Analysis {
    /// Whether nothing was found.
    pub fn is_clean(&self) -> bool {
        self.unreachable.is_empty() && self.dead_ends.is_empty()
    }
}

impl fmt::Display for Analysis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_clean() {
            return f.write_str("every state is reachable; only terminal states have no way out");
        }
        let list = |names: &[&str]| names.join(", ");
        if !self.unreachable.is_empty() {
            write!(
                f,
                "unreachable from the initial state: {}",
                list(&self.unreachable)
            )?;
        }
        if !self.dead_ends.is_empty() {
            if !self.unreachable.is_empty() {
                f.write_str("; ")?;
            }
            write!(
                f,
                "no transition leaves (mark them `#[aggregate(terminal)]` if that is intended): {}",
                list(&self.dead_ends)
            )?;
        }
        Ok(())
    }
}

impl StateMachine {
    /// The state named `name`, if any.
    pub fn state(&self, name: &str) -> Option<&State> {
        self.states.iter().find(|s| s.name == name)
    }

    /// The transitions that leave `state`.
    pub fn transitions_from<'a>(
        &'a self,
        state: &'a str,
    ) -> impl Iterator<Item = &'a Transition> + 'a {
        self.transitions.iter().filter(move |t| t.from == state)
    }

    /// The declared target of command `on` in state `from`.
    pub fn target(&self, from: &str, on: &str) -> Option<&'static str> {
        self.transitions
            .iter()
            .find(|t| t.from == from && t.on == on)
            .map(|t| t.to)
    }

    /// States that no sequence of transitions reaches from the initial state, in declaration
    /// order.
    pub fn unreachable_states(&self) -> Vec<&'static str> {
        let mut reached = BTreeSet::from([self.initial]);
        let mut queue = VecDeque::from([self.initial]);
        while let Some(state) = queue.pop_front() {
            for transition in self.transitions_from(state) {
                if reached.insert(transition.to) {
                    queue.push_back(transition.to);
                }
            }
        }
        self.states
            .iter()
            .map(|s| s.name)
            .filter(|name| !reached.contains(name))
            .collect()
    }

    /// Non-terminal states that no transition leaves, in declaration order.
    pub fn dead_ends(&self) -> Vec<&'static str> {
        self.states
            .iter()
            .filter(|s| !s.terminal && self.transitions_from(s.name).next().is_none())
            .map(|s| s.name)
            .collect()
    }

    /// Unreachable states and non-terminal dead ends together.
    pub fn analyze(&self) -> Analysis {
        Analysis {
            unreachable: self.unreachable_states(),
            dead_ends: self.dead_ends(),
        }
    }

    /// The machine as a Mermaid `stateDiagram-v2`: `[*]` points at the initial state, terminal
    /// states point at `[*]`, each transition is labelled with its command.
    pub fn to_mermaid(&self) -> String {
        let mut out = String::from("stateDiagram-v2\n");
        let _ = writeln!(out, "    [*] --> {}", self.initial);
        for t in self.transitions {
            let _ = writeln!(out, "    {} --> {} : {}", t.from, t.to, t.on);
        }
        for state in self.states.iter().filter(|s| s.terminal) {
            let _ = writeln!(out, "    {} --> [*]", state.name);
        }
        out
    }

    /// The machine as a Graphviz DOT digraph: a point marks the start, terminal states have a
    /// double border, each edge is labelled with its command.
    pub fn to_dot(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "digraph {} {{", dot_id(self.aggregate));
        out.push_str("    rankdir=LR;\n    node [shape=box, style=rounded];\n");
        out.push_str("    __start [shape=point, label=\"\"];\n");
        for state in self.states {
            let extra = if state.terminal {
                ", peripheries=2"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "    {} [label={}{extra}];",
                dot_id(state.name),
                dot_id(state.name)
            );
        }
        let _ = writeln!(out, "    __start -> {};", dot_id(self.initial));
        for t in self.transitions {
            let _ = writeln!(
                out,
                "    {} -> {} [label={}];",
                dot_id(t.from),
                dot_id(t.to),
                dot_id(t.on)
            );
        }
        out.push_str("}\n");
        out
    }
}

/// A quoted DOT identifier.
fn dot_id(name: &str) -> String {
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MACHINE: StateMachine = StateMachine {
        aggregate: "Ticket",
        initial: "New",
        states: &[
            State {
                name: "New",
                terminal: false,
            },
            State {
                name: "Open",
                terminal: false,
            },
            State {
                name: "Stuck",
                terminal: false,
            },
            State {
                name: "Orphan",
                terminal: false,
            },
            State {
                name: "Done",
                terminal: true,
            },
        ],
        commands: &["Open", "Block", "Close"],
        transitions: &[
            Transition {
                from: "New",
                on: "Open",
                to: "Open",
                handler: "open",
            },
            Transition {
                from: "Open",
                on: "Block",
                to: "Stuck",
                handler: "block",
            },
            Transition {
                from: "Open",
                on: "Close",
                to: "Done",
                handler: "close",
            },
            Transition {
                from: "Orphan",
                on: "Close",
                to: "Done",
                handler: "close",
            },
        ],
    };

    #[test]
    fn analysis_finds_unreachable_states_and_dead_ends() {
        let analysis = MACHINE.analyze();
        assert_eq!(analysis.unreachable, ["Orphan"]);
        assert_eq!(analysis.dead_ends, ["Stuck"]);
        let text = analysis.to_string();
        assert!(
            text.contains("unreachable from the initial state: Orphan"),
            "{text}"
        );
        assert!(
            text.contains("terminal)]` if that is intended): Stuck"),
            "{text}"
        );
    }

    #[test]
    fn lookups() {
        assert_eq!(MACHINE.target("Open", "Close"), Some("Done"));
        assert_eq!(MACHINE.target("New", "Close"), None);
        assert_eq!(MACHINE.transitions_from("Open").count(), 2);
        assert!(MACHINE.state("Done").is_some_and(|s| s.terminal));
    }

    #[test]
    fn renders_mermaid_and_dot() {
        let mermaid = MACHINE.to_mermaid();
        assert!(
            mermaid.starts_with("stateDiagram-v2\n    [*] --> New\n"),
            "{mermaid}"
        );
        assert!(
            mermaid.contains("    Open --> Stuck : Block\n"),
            "{mermaid}"
        );
        assert!(mermaid.ends_with("    Done --> [*]\n"), "{mermaid}");
        let dot = MACHINE.to_dot();
        assert!(dot.starts_with("digraph \"Ticket\" {"), "{dot}");
        assert!(
            dot.contains("\"Open\" -> \"Stuck\" [label=\"Block\"];"),
            "{dot}"
        );
        assert!(
            dot.contains("\"Done\" [label=\"Done\", peripheries=2];"),
            "{dot}"
        );
        assert!(dot.contains("__start -> \"New\";"), "{dot}");
        assert_eq!(dot_id("a\"b"), "\"a\\\"b\"");
    }
}
