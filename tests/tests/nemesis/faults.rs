//! The faults, the seeded schedule that orders them, and the nemesis that injects them into a
//! [`ProxiedCluster`].

use cqrs_nats::JetStreamEventStore;
use cqrs_test_server::ProxiedCluster;
use std::fmt;
use std::time::{Duration, Instant};

/// A small seeded generator (SplitMix64): the same seed gives the same schedule and workload.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// The generator for `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next_u64() % n as u64).unwrap_or(0)
    }

    /// A duration between `lo` and `hi` milliseconds.
    pub(crate) fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next_u64() % (hi - lo + 1))
    }
}

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// SIGKILL one node; restart it after `hold`.
    Kill,
    /// SIGSTOP one node for `hold` (longer than an election timeout); then SIGCONT.
    Pause,
    /// SIGKILL every node at once; restart them all after `hold`.
    PowerLoss,
    /// Cut one node's routes for `hold`; then heal.
    Partition,
    /// Drop every client connection mid-request and refuse new ones for `hold`.
    ClientCut,
}

impl Kind {
    /// Every kind.
    pub(crate) const ALL: [Self; 5] = [
        Self::Kill,
        Self::Pause,
        Self::PowerLoss,
        Self::Partition,
        Self::ClientCut,
    ];

    /// The kind named `name` (as the summary spells it).
    pub(crate) fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Pause => "pause",
            Self::PowerLoss => "power",
            Self::Partition => "partition",
            Self::ClientCut => "client-cut",
        }
    }

    /// How long the fault lasts, in milliseconds: a pause and a partition outlast nats-server's
    /// longest election timeout (9 s).
    fn hold(self) -> (u64, u64) {
        match self {
            Self::Kill => (200, 2_000),
            Self::Pause | Self::Partition => (9_500, 11_000),
            Self::PowerLoss => (200, 1_500),
            Self::ClientCut => (100, 1_500),
        }
    }
}

/// Which node a fault hits, decided when it is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Victim {
    /// The events stream's leader at that moment.
    Leader,
    /// Node `i` (0-based), leader or not.
    Node(usize),
}

/// One fault of a schedule.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fault {
    /// What it does.
    pub(crate) kind: Kind,
    /// Which node (for kill, pause and partition).
    pub(crate) victim: Victim,
    /// How long it lasts.
    pub(crate) hold: Duration,
    /// The pause after the writers recovered from it, before the next fault.
    pub(crate) quiet: Duration,
}

/// `count` faults of kind `only` drawn from `seed`.
pub(crate) fn schedule_of(seed: u64, count: usize, only: Kind) -> Vec<Fault> {
    let mut rng = Rng::new(seed);
    let (lo, hi) = only.hold();
    (0..count)
        .map(|_| Fault {
            kind: only,
            victim: Victim::Leader,
            hold: rng.millis(lo, hi),
            quiet: rng.millis(300, 1_500),
        })
        .collect()
}

/// `count` faults drawn from `seed` for a three-node cluster; with `each_kind`, the first five
/// are one of each kind in a seeded order.
pub(crate) fn schedule(seed: u64, count: usize, each_kind: bool) -> Vec<Fault> {
    let mut rng = Rng::new(seed);
    let mut kinds = Kind::ALL.to_vec();
    // Fisher-Yates.
    for i in (1..kinds.len()).rev() {
        let j = rng.below(i + 1);
        kinds.swap(i, j);
    }
    (0..count)
        .map(|i| {
            let kind = if each_kind && i < kinds.len() {
                kinds[i]
            } else {
                Kind::ALL[rng.below(Kind::ALL.len())]
            };
            let victim = if rng.below(2) == 0 {
                Victim::Leader
            } else {
                Victim::Node(rng.below(3))
            };
            let (lo, hi) = kind.hold();
            Fault {
                kind,
                victim,
                hold: rng.millis(lo, hi),
                quiet: rng.millis(300, 1_500),
            }
        })
        .collect()
}

/// What a fault did, for the report.
#[derive(Debug, Clone)]
pub(crate) struct Injected {
    /// The fault.
    pub(crate) fault: Fault,
    /// The node it hit (`n1`..), and whether it led the events stream then.
    pub(crate) node: Option<(String, bool)>,
    /// Connections the cut dropped.
    pub(crate) dropped: usize,
    /// How long after the heal the writers acknowledged commands again, if they did in time.
    pub(crate) recovered_after: Option<Duration>,
}

impl fmt::Display for Injected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.fault.kind.name())?;
        if let Some((node, leader)) = &self.node {
            write!(f, "({node}{})", if *leader { ",leader" } else { "" })?;
        }
        write!(f, "/{}ms", self.fault.hold.as_millis())?;
        if self.dropped > 0 {
            write!(f, "/dropped={}", self.dropped)?;
        }
        match self.recovered_after {
            Some(after) => write!(f, "/recovered={}ms", after.as_millis()),
            None => write!(f, "/recovered=never"),
        }
    }
}

/// The server name of the events stream's leader, asked through `observer` (bounded).
pub(crate) async fn stream_leader(observer: &JetStreamEventStore) -> Option<String> {
    let info = tokio::time::timeout(Duration::from_secs(2), async {
        let stream = observer
            .jetstream()
            .get_stream(observer.stream_name())
            .await
            .ok()?;
        stream.cached_info().cluster.as_ref()?.leader.clone()
    });
    info.await.ok().flatten()
}

/// Injects `fault` into `cluster` and heals it after its hold; `observer` finds the leader.
///
/// # Panics
///
/// If a server cannot be restarted or signalled.
pub(crate) async fn inject(
    cluster: &mut ProxiedCluster,
    observer: &JetStreamEventStore,
    fault: Fault,
) -> Injected {
    let leader = stream_leader(observer).await;
    let leader_index = leader.as_deref().and_then(|l| cluster.index_of(l));
    let node = match fault.victim {
        Victim::Leader => leader_index.unwrap_or(0),
        Victim::Node(i) => i % cluster.len(),
    };
    let named = Some((
        ProxiedCluster::server_name(node),
        leader_index == Some(node),
    ));
    let mut injected = Injected {
        fault,
        node: None,
        dropped: 0,
        recovered_after: None,
    };
    match fault.kind {
        Kind::Kill => {
            injected.node = named;
            cluster.server_mut(node).kill();
            tokio::time::sleep(fault.hold).await;
            cluster.server_mut(node).restart().await.expect("restart");
        }
        Kind::Pause => {
            injected.node = named;
            cluster.server_mut(node).pause().expect("SIGSTOP");
            tokio::time::sleep(fault.hold).await;
            cluster.server_mut(node).resume().expect("SIGCONT");
        }
        Kind::PowerLoss => {
            cluster.kill_all();
            tokio::time::sleep(fault.hold).await;
            cluster
                .restart_all()
                .await
                .expect("restart after power loss");
        }
        Kind::Partition => {
            injected.node = named;
            injected.dropped = cluster.isolate(node);
            tokio::time::sleep(fault.hold).await;
            cluster.heal();
        }
        Kind::ClientCut => {
            for i in 0..cluster.len() {
                injected.dropped += cluster.client_proxy(i).cut();
            }
            tokio::time::sleep(fault.hold).await;
            for i in 0..cluster.len() {
                cluster.client_proxy(i).heal();
            }
        }
    }
    injected
}

/// Waits (up to `within`) until `acks` grew by `more` from now; returns how long it took.
pub(crate) async fn progress(
    acks: &std::sync::atomic::AtomicUsize,
    more: usize,
    within: Duration,
) -> Option<Duration> {
    let since = Instant::now();
    let from = acks.load(std::sync::atomic::Ordering::SeqCst);
    while since.elapsed() < within {
        if acks.load(std::sync::atomic::Ordering::SeqCst) >= from + more {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
