//! A graph editor: graphs of named nodes and directed edges, edited by commands.
//!
//! The graph is a plain aggregate (a struct state with `decide` and `evolve`, no state machine),
//! derived with `#[derive(Aggregate)]` and `#[transitions]`. Its rules: a graph is created once;
//! node ids are unique; an edge joins two existing, different nodes, at most once; removing a
//! node disconnects its edges first — several events of one command, stored atomically.
//!
//! A graph view projection keeps, per graph, the node and edge counts and the adjacency lists;
//! the repository's time travel (`state_at_version`, `state_at_time`) shows a graph as it was.

use crate::host::{BoxError, ProjectionHost, RunningProjection};
use cqrs_core::read_model::apply_once;
use cqrs_core::{
    Aggregate, CommandError, CommandMetadata, DomainEvent, EventFilter, EventStore, HandlerError,
    Projection, ReadModelStore, RecordedEvent, Repository, transitions,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;
use time::OffsetDateTime;

/// A directed edge between two nodes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Edge {
    /// Where it starts.
    pub from: String,
    /// Where it ends.
    pub to: String,
}

impl fmt::Display for Edge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{}", self.from, self.to)
    }
}

/// A graph's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Aggregate)]
#[aggregate(command = GraphCommand, event = GraphEvent, error = GraphError)]
pub struct Graph {
    /// Its name; `None` until it is created.
    pub name: Option<String>,
    /// Node id -> label.
    pub nodes: BTreeMap<String, String>,
    /// The edges.
    pub edges: BTreeSet<Edge>,
}

/// What can be asked of a graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphCommand {
    /// Create the graph.
    Create {
        /// Its name.
        name: String,
    },
    /// Add a node.
    AddNode {
        /// Its id, unique in the graph.
        node: String,
        /// What it shows.
        label: String,
    },
    /// Connect two existing nodes.
    Connect {
        /// Where the edge starts.
        from: String,
        /// Where it ends.
        to: String,
    },
    /// Remove an edge.
    Disconnect {
        /// Where the edge starts.
        from: String,
        /// Where it ends.
        to: String,
    },
    /// Remove a node and every edge that touches it.
    RemoveNode {
        /// The node.
        node: String,
    },
}

/// What happened to a graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, DomainEvent)]
#[event(json_schema)]
pub enum GraphEvent {
    /// The graph was created.
    GraphCreated {
        /// Its name.
        name: String,
    },
    /// A node was added.
    NodeAdded {
        /// Its id.
        node: String,
        /// What it shows.
        label: String,
    },
    /// Two nodes were connected.
    EdgeConnected {
        /// Where the edge starts.
        from: String,
        /// Where it ends.
        to: String,
    },
    /// An edge was removed.
    EdgeDisconnected {
        /// Where the edge started.
        from: String,
        /// Where it ended.
        to: String,
    },
    /// A node was removed (its edges were disconnected before, in the same commit).
    NodeRemoved {
        /// Its id.
        node: String,
    },
}

/// Why a graph refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// Commands other than `Create` need an existing graph.
    #[error("the graph does not exist")]
    NotCreated,
    /// A graph is created once.
    #[error("the graph exists already")]
    AlreadyCreated,
    /// Node ids are unique within a graph.
    #[error("node `{0}` exists already")]
    DuplicateNode(String),
    /// The node is not in the graph.
    #[error("node `{0}` does not exist")]
    UnknownNode(String),
    /// An edge joins two different nodes.
    #[error("an edge cannot join `{0}` to itself")]
    SelfLoop(String),
    /// Two nodes are connected at most once.
    #[error("edge {0} exists already")]
    DuplicateEdge(Edge),
    /// The edge is not in the graph.
    #[error("edge {0} does not exist")]
    UnknownEdge(Edge),
}

#[transitions]
impl Graph {
    fn decide(&self, command: GraphCommand) -> Result<Vec<GraphEvent>, GraphError> {
        if let GraphCommand::Create { name } = command {
            return match self.name {
                Some(_) => Err(GraphError::AlreadyCreated),
                None => Ok(vec![GraphEvent::GraphCreated { name }]),
            };
        }
        if self.name.is_none() {
            return Err(GraphError::NotCreated);
        }
        match command {
            GraphCommand::Create { .. } => Err(GraphError::AlreadyCreated),
            GraphCommand::AddNode { node, label } => {
                if self.nodes.contains_key(&node) {
                    return Err(GraphError::DuplicateNode(node));
                }
                Ok(vec![GraphEvent::NodeAdded { node, label }])
            }
            GraphCommand::Connect { from, to } => {
                self.node(&from)?;
                self.node(&to)?;
                if from == to {
                    return Err(GraphError::SelfLoop(from));
                }
                let edge = Edge { from, to };
                if self.edges.contains(&edge) {
                    return Err(GraphError::DuplicateEdge(edge));
                }
                Ok(vec![GraphEvent::EdgeConnected {
                    from: edge.from,
                    to: edge.to,
                }])
            }
            GraphCommand::Disconnect { from, to } => {
                let edge = Edge { from, to };
                if !self.edges.contains(&edge) {
                    return Err(GraphError::UnknownEdge(edge));
                }
                Ok(vec![GraphEvent::EdgeDisconnected {
                    from: edge.from,
                    to: edge.to,
                }])
            }
            GraphCommand::RemoveNode { node } => {
                self.node(&node)?;
                let mut events: Vec<GraphEvent> = self
                    .edges
                    .iter()
                    .filter(|e| e.from == node || e.to == node)
                    .map(|e| GraphEvent::EdgeDisconnected {
                        from: e.from.clone(),
                        to: e.to.clone(),
                    })
                    .collect();
                events.push(GraphEvent::NodeRemoved { node });
                Ok(events)
            }
        }
    }

    fn evolve(mut self, event: &GraphEvent) -> Self {
        match event {
            GraphEvent::GraphCreated { name } => self.name = Some(name.clone()),
            GraphEvent::NodeAdded { node, label } => {
                self.nodes.insert(node.clone(), label.clone());
            }
            GraphEvent::EdgeConnected { from, to } => {
                self.edges.insert(Edge {
                    from: from.clone(),
                    to: to.clone(),
                });
            }
            GraphEvent::EdgeDisconnected { from, to } => {
                self.edges.remove(&Edge {
                    from: from.clone(),
                    to: to.clone(),
                });
            }
            GraphEvent::NodeRemoved { node } => {
                self.nodes.remove(node);
                self.edges.retain(|e| &e.from != node && &e.to != node);
            }
        }
        self
    }
}

impl Graph {
    /// The label of node `node`, or why there is none.
    fn node(&self, node: &str) -> Result<&str, GraphError> {
        self.nodes
            .get(node)
            .map(String::as_str)
            .ok_or_else(|| GraphError::UnknownNode(node.to_owned()))
    }

    /// One line: node and edge counts, then the edges.
    pub fn summary(&self) -> String {
        let edges: Vec<String> = self.edges.iter().map(ToString::to_string).collect();
        format!(
            "nodes={} edges={}: {}",
            self.nodes.len(),
            self.edges.len(),
            if edges.is_empty() {
                "-".to_owned()
            } else {
                edges.join(" ")
            }
        )
    }
}

/// One graph as the view shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphView {
    /// The graph's name.
    pub name: String,
    /// How many nodes it has.
    pub nodes: usize,
    /// How many edges it has.
    pub edges: usize,
    /// Every node with the nodes its edges lead to.
    pub adjacency: BTreeMap<String, BTreeSet<String>>,
}

impl GraphView {
    fn recount(&mut self) {
        self.nodes = self.adjacency.len();
        self.edges = self.adjacency.values().map(BTreeSet::len).sum();
    }
}

/// Projects graphs into [`GraphView`]s, one per graph id.
#[derive(Debug, Clone)]
pub struct GraphViews<M> {
    /// Where the views are kept.
    pub model: M,
}

impl<M: ReadModelStore<GraphView>> Projection for GraphViews<M> {
    fn name(&self) -> &'static str {
        "graph-views"
    }

    fn filter(&self) -> EventFilter {
        EventFilter::all().aggregate_type(Graph::TYPE)
    }

    async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        let graph_event: GraphEvent = event.payload.decode()?;
        apply_once(&self.model, &event.aggregate_id, event.position, |old| {
            let mut view = old.unwrap_or_default();
            match &graph_event {
                GraphEvent::GraphCreated { name } => view.name.clone_from(name),
                GraphEvent::NodeAdded { node, .. } => {
                    view.adjacency.entry(node.clone()).or_default();
                }
                GraphEvent::EdgeConnected { from, to } => {
                    view.adjacency
                        .entry(from.clone())
                        .or_default()
                        .insert(to.clone());
                }
                GraphEvent::EdgeDisconnected { from, to } => {
                    if let Some(targets) = view.adjacency.get_mut(from) {
                        targets.remove(to);
                    }
                }
                GraphEvent::NodeRemoved { node } => {
                    view.adjacency.remove(node);
                    for targets in view.adjacency.values_mut() {
                        targets.remove(node);
                    }
                }
            }
            view.recount();
            view
        })
        .await?;
        Ok(())
    }
}

/// What the walkthrough saw, for checks beyond its transcript.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GraphEditorReport {
    /// Refused commands: `graph command: reason`.
    pub refused: Vec<String>,
    /// How many events the node removal committed at once.
    pub removal_events: usize,
    /// The graph view, by graph id.
    pub views: BTreeMap<String, GraphView>,
    /// `g-1` right after version 4.
    pub at_version: Graph,
    /// `g-1` as it was when its version 9 was recorded.
    pub at_time: Graph,
    /// `g-1` now.
    pub now: Graph,
}

/// The `graph_editor` example's walkthrough, written to `out`, on any [`ProjectionHost`] (the
/// store should be empty).
///
/// Builds two graphs, has the rules refuse a duplicate node, a dangling edge, a self-loop and a
/// duplicate edge, removes a node with its edges in one atomic commit, prints the graph view,
/// and travels back to an earlier version and an earlier time.
pub async fn demo<H: ProjectionHost>(
    host: &H,
    out: &mut impl fmt::Write,
) -> Result<GraphEditorReport, BoxError> {
    use GraphCommand::{AddNode, Connect, Create, RemoveNode};

    let mut report = GraphEditorReport::default();
    let graphs = Repository::<Graph, H::Store>::new(host.store().clone()).with_conflict_retries(3);
    let views = GraphViews {
        model: host.model::<GraphView>("graph-views").await?,
    };
    let model = views.model.clone();
    let view = host.spawn(views).await?;

    let node = |node: &str, label: &str| AddNode {
        node: node.to_owned(),
        label: label.to_owned(),
    };
    let connect = |from: &str, to: &str| Connect {
        from: from.to_owned(),
        to: to.to_owned(),
    };
    let steps = [
        (
            "g-1",
            Create {
                name: "build pipeline".to_owned(),
            },
        ),
        ("g-1", node("fetch", "Fetch sources")),
        ("g-1", node("compile", "Compile")),
        ("g-1", node("test", "Run tests")),
        ("g-1", connect("fetch", "compile")),
        ("g-1", connect("compile", "test")),
        ("g-1", node("package", "Package")),
        ("g-1", connect("test", "package")),
        ("g-1", connect("fetch", "test")),
        (
            "g-2",
            Create {
                name: "org chart".to_owned(),
            },
        ),
        ("g-2", node("ceo", "Chief executive")),
        ("g-2", node("cto", "Chief technologist")),
        ("g-2", connect("ceo", "cto")),
        // Refused by the rules.
        ("g-1", node("test", "Run the tests again")),
        ("g-1", connect("test", "deploy")),
        ("g-1", connect("test", "test")),
        ("g-1", connect("fetch", "compile")),
        ("g-3", node("a", "A")),
    ];
    writeln!(out, "== two graphs, edited ==")?;
    let mut head = 0;
    for (id, command) in steps {
        head = head.max(execute(&graphs, id, command, out, &mut report).await?);
    }

    // The instant g-1's version 9 was recorded: later, the graph changes again.
    let g1 = cqrs_core::StreamId::of::<Graph>("g-1", None);
    let history = graphs.history(&g1, 1).await?;
    let before_removal = history
        .iter()
        .find(|e| e.version == 9)
        .map(|e| e.recorded_at)
        .ok_or("g-1 has no version 9")?;
    // Keep the next events strictly later, even on a coarse clock.
    tokio::time::sleep(Duration::from_millis(5)).await;

    writeln!(out, "== one command, several events, one atomic commit ==")?;
    let committed = graphs
        .execute(
            "g-1",
            RemoveNode {
                node: "compile".to_owned(),
            },
            actor(),
        )
        .await?;
    for event in &committed {
        head = head.max(event.position);
        writeln!(out, "g-1 v{} {:?}", event.version, event.payload)?;
    }
    report.removal_events = committed.len();

    writeln!(out, "== graph view ==")?;
    view.wait_for(head).await?;
    view.stop().await?;
    for (id, entry) in model.entries().await? {
        let graph = entry.value;
        writeln!(
            out,
            "{id} {:?}: nodes={} edges={}",
            graph.name, graph.nodes, graph.edges
        )?;
        for (from, targets) in &graph.adjacency {
            let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
            writeln!(out, "  {from} -> [{}]", targets.join(", "))?;
        }
        report.views.insert(id, graph);
    }

    writeln!(out, "== time travel ==")?;
    time_travel(&graphs, before_removal, out, &mut report).await?;
    Ok(report)
}

/// Prints `g-1` right after its version 4, as it was at instant `at`, and now.
async fn time_travel<S: EventStore + Clone>(
    graphs: &Repository<Graph, S>,
    at: OffsetDateTime,
    out: &mut impl fmt::Write,
    report: &mut GraphEditorReport,
) -> Result<(), BoxError> {
    let g1 = cqrs_core::StreamId::of::<Graph>("g-1", None);
    let at_version = graphs.state_at_version(&g1, 4).await?;
    writeln!(
        out,
        "g-1 at v{}: {}",
        at_version.version(),
        at_version.state.summary()
    )?;
    let at_time = graphs.state_at_time(&g1, at).await?;
    writeln!(
        out,
        "g-1 when v9 was recorded (v{}): {}",
        at_time.version(),
        at_time.state.summary()
    )?;
    let now = graphs.load(&g1).await?;
    writeln!(out, "g-1 now (v{}): {}", now.version(), now.state.summary())?;
    report.at_version = at_version.state;
    report.at_time = at_time.state;
    report.now = now.state;
    Ok(())
}

fn actor() -> CommandMetadata {
    CommandMetadata::root().with_actor("user:ada")
}

/// Runs one command and prints its events or why it was refused; returns the store position of
/// its last event (0 when refused).
async fn execute<S: EventStore + Clone>(
    graphs: &Repository<Graph, S>,
    id: &str,
    command: GraphCommand,
    out: &mut impl fmt::Write,
    report: &mut GraphEditorReport,
) -> Result<u64, BoxError> {
    let name = command_name(&command);
    match graphs.execute(id, command, actor()).await {
        Ok(events) => {
            let mut last = 0;
            for event in events {
                last = event.position;
                writeln!(out, "{id} v{} {:?}", event.version, event.payload)?;
            }
            Ok(last)
        }
        Err(CommandError::Rejected(reason)) => {
            let line = format!("{id} {name}: {reason}");
            writeln!(out, "refused: {line}")?;
            report.refused.push(line);
            Ok(0)
        }
        Err(other) => Err(other.into()),
    }
}

fn command_name(command: &GraphCommand) -> &'static str {
    match command {
        GraphCommand::Create { .. } => "Create",
        GraphCommand::AddNode { .. } => "AddNode",
        GraphCommand::Connect { .. } => "Connect",
        GraphCommand::Disconnect { .. } => "Disconnect",
        GraphCommand::RemoveNode { .. } => "RemoveNode",
    }
}
