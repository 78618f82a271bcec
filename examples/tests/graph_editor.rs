//! The `graph_editor` example: its walkthrough tells the expected story on the in-memory store
//! and on JetStream against a spawned server, and its rules hold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cqrs_core::testing::given;
use examples::graph_editor::{
    Edge, Graph, GraphCommand, GraphEditorReport, GraphError, GraphEvent, demo,
};
use examples::host::{InMemoryHost, JetStreamHost};
use std::collections::{BTreeMap, BTreeSet};

#[tokio::test]
async fn walkthrough_tells_the_expected_story() {
    let mut out = String::new();
    let report = demo(&InMemoryHost::new(), &mut out).await.unwrap();
    check_report(&report);
    check_transcript(&out);
}

#[tokio::test]
async fn walkthrough_runs_on_jetstream() {
    let server = cqrs_test_server::NatsServer::start().await.unwrap();
    let host = JetStreamHost::connect(&server.url(), "graphs")
        .await
        .unwrap();
    let mut out = String::new();
    let report = Box::pin(demo(&host, &mut out)).await.unwrap();
    check_report(&report);
    check_transcript(&out);
}

fn edges(pairs: &[(&str, &str)]) -> BTreeSet<Edge> {
    pairs
        .iter()
        .map(|(from, to)| Edge {
            from: (*from).into(),
            to: (*to).into(),
        })
        .collect()
}

fn adjacency(lists: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
    lists
        .iter()
        .map(|(from, to)| {
            (
                (*from).to_owned(),
                to.iter().map(|t| (*t).to_owned()).collect(),
            )
        })
        .collect()
}

fn check_report(report: &GraphEditorReport) {
    assert_eq!(
        report.refused,
        [
            "g-1 AddNode: node `test` exists already",
            "g-1 Connect: node `deploy` does not exist",
            "g-1 Connect: an edge cannot join `test` to itself",
            "g-1 Connect: edge fetch->compile exists already",
            "g-3 AddNode: the graph does not exist",
        ]
    );
    // Two disconnections and the removal, in one commit.
    assert_eq!(report.removal_events, 3);

    let g1 = &report.views["g-1"];
    assert_eq!(g1.name, "build pipeline");
    assert_eq!((g1.nodes, g1.edges), (3, 2));
    assert_eq!(
        g1.adjacency,
        adjacency(&[
            ("fetch", &["test"]),
            ("package", &[]),
            ("test", &["package"])
        ])
    );
    let g2 = &report.views["g-2"];
    assert_eq!((g2.name.as_str(), g2.nodes, g2.edges), ("org chart", 2, 1));
    assert_eq!(report.views.len(), 2, "no view for the refused g-3");

    // Time travel.
    assert_eq!(
        report.at_version.nodes.keys().collect::<Vec<_>>(),
        ["compile", "fetch", "test"]
    );
    assert!(report.at_version.edges.is_empty());
    assert_eq!(report.at_time.nodes.len(), 4);
    assert_eq!(
        report.at_time.edges,
        edges(&[
            ("compile", "test"),
            ("fetch", "compile"),
            ("fetch", "test"),
            ("test", "package")
        ])
    );
    assert_eq!(
        report.now.edges,
        edges(&[("fetch", "test"), ("test", "package")])
    );
    assert!(!report.now.nodes.contains_key("compile"));
    // The view agrees with the aggregate.
    assert_eq!(g1.nodes, report.now.nodes.len());
    assert_eq!(g1.edges, report.now.edges.len());
}

fn check_transcript(out: &str) {
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "== two graphs, edited ==", "{out}");
    assert_eq!(
        lines[1],
        r#"g-1 v1 GraphCreated { name: "build pipeline" }"#
    );
    assert_eq!(
        lines[9],
        r#"g-1 v9 EdgeConnected { from: "fetch", to: "test" }"#
    );
    assert_eq!(
        lines[13],
        r#"g-2 v4 EdgeConnected { from: "ceo", to: "cto" }"#
    );
    let atomic = lines
        .iter()
        .position(|l| *l == "== one command, several events, one atomic commit ==")
        .expect(out);
    assert_eq!(
        &lines[atomic + 1..],
        [
            r#"g-1 v10 EdgeDisconnected { from: "compile", to: "test" }"#,
            r#"g-1 v11 EdgeDisconnected { from: "fetch", to: "compile" }"#,
            r#"g-1 v12 NodeRemoved { node: "compile" }"#,
            "== graph view ==",
            r#"g-1 "build pipeline": nodes=3 edges=2"#,
            "  fetch -> [test]",
            "  package -> []",
            "  test -> [package]",
            r#"g-2 "org chart": nodes=2 edges=1"#,
            "  ceo -> [cto]",
            "  cto -> []",
            "== time travel ==",
            "g-1 at v4: nodes=3 edges=0: -",
            "g-1 when v9 was recorded (v9): nodes=4 edges=4: compile->test fetch->compile fetch->test test->package",
            "g-1 now (v12): nodes=3 edges=2: fetch->test test->package",
        ],
        "{out}"
    );
    for refusal in [
        "refused: g-1 AddNode: node `test` exists already",
        "refused: g-3 AddNode: the graph does not exist",
    ] {
        assert!(lines.contains(&refusal), "missing {refusal:?} in\n{out}");
    }
}

fn created() -> GraphEvent {
    GraphEvent::GraphCreated { name: "g".into() }
}

fn node(id: &str) -> GraphEvent {
    GraphEvent::NodeAdded {
        node: id.into(),
        label: id.to_uppercase(),
    }
}

#[test]
fn the_graph_rules() {
    given::<Graph>([])
        .when(GraphCommand::AddNode {
            node: "a".into(),
            label: "A".into(),
        })
        .then_error(GraphError::NotCreated);
    given::<Graph>([created()])
        .when(GraphCommand::Create { name: "h".into() })
        .then_error(GraphError::AlreadyCreated);
    given::<Graph>([created(), node("a")])
        .when(GraphCommand::AddNode {
            node: "a".into(),
            label: "again".into(),
        })
        .then_error(GraphError::DuplicateNode("a".into()));
    given::<Graph>([created(), node("a")])
        .when(GraphCommand::Connect {
            from: "a".into(),
            to: "b".into(),
        })
        .then_error(GraphError::UnknownNode("b".into()));
    given::<Graph>([created(), node("a"), node("b")])
        .when(GraphCommand::Disconnect {
            from: "a".into(),
            to: "b".into(),
        })
        .then_error(GraphError::UnknownEdge(Edge {
            from: "a".into(),
            to: "b".into(),
        }));
}

#[test]
fn removing_a_node_disconnects_its_edges_first() {
    let connect = |from: &str, to: &str| GraphEvent::EdgeConnected {
        from: from.into(),
        to: to.into(),
    };
    given::<Graph>([
        created(),
        node("a"),
        node("b"),
        node("c"),
        connect("a", "b"),
        connect("b", "c"),
        connect("a", "c"),
    ])
    .when(GraphCommand::RemoveNode { node: "b".into() })
    .then_events([
        GraphEvent::EdgeDisconnected {
            from: "a".into(),
            to: "b".into(),
        },
        GraphEvent::EdgeDisconnected {
            from: "b".into(),
            to: "c".into(),
        },
        GraphEvent::NodeRemoved { node: "b".into() },
    ])
    .then_state(Graph {
        name: Some("g".into()),
        nodes: [("a", "A"), ("c", "C")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect(),
        edges: edges(&[("a", "c")]),
    });
}
