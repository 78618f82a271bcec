//! Where a projection starts and how its runner behaves.

use async_nats::jetstream::consumer::DeliverPolicy;
use cqrs_core::projection::RetryPolicy;
use std::time::Duration;
use time::OffsetDateTime;

/// Where a projection's new consumer starts. An existing consumer keeps its checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// From the first event: a new projection built from history.
    #[default]
    Beginning,
    /// From this stream position (inclusive).
    Position(u64),
    /// From the first event stored at or after this time.
    Time(OffsetDateTime),
    /// Only events appended after the consumer is created.
    New,
}

impl StartFrom {
    pub(super) fn deliver_policy(self) -> DeliverPolicy {
        match self {
            Self::Beginning | Self::Position(0) => DeliverPolicy::All,
            Self::Position(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
            Self::Time(start_time) => DeliverPolicy::ByStartTime { start_time },
            Self::New => DeliverPolicy::New,
        }
    }
}

/// Settings of a JetStream projection runner.
#[derive(Debug, Clone)]
pub struct ProjectionConfig {
    pub(super) retry: RetryPolicy,
    pub(super) ack_wait: Duration,
    pub(super) max_in_flight: usize,
    pub(super) pinned: bool,
    pub(super) group: String,
    pub(super) priority_timeout: Duration,
    pub(super) pull_expiry: Duration,
    pub(super) start: StartFrom,
    pub(super) heartbeat: Duration,
}

impl Default for ProjectionConfig {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            ack_wait: Duration::from_secs(5),
            max_in_flight: 1,
            pinned: true,
            group: "cqrs".to_owned(),
            priority_timeout: Duration::from_secs(60),
            pull_expiry: Duration::from_secs(10),
            start: StartFrom::Beginning,
            heartbeat: Duration::from_secs(2),
        }
    }
}

impl ProjectionConfig {
    /// Defaults: [`RetryPolicy::default`], 5 s ack wait, one event in flight per partition,
    /// pinned group `cqrs` with a 60 s priority timeout, pulls expiring after 10 s, new consumers
    /// from the beginning, a worker heartbeat every 2 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// How failing events are retried before they are parked.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// How long the server waits for an ack before redelivering (progress is sent every third of
    /// it while a handler runs, so a slow handler is not redelivered). It bounds how long a
    /// partition stalls when a worker crashes holding an event, or when a handover meets an
    /// event already on its way to the worker that let the partition go.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait.max(Duration::from_millis(100));
        self
    }

    /// The consumer's `max_ack_pending`: events delivered ahead of the acked one. 1 (the
    /// default) keeps per-aggregate order through redeliveries and failovers; more is faster but
    /// a failover can reorder an aggregate's events.
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max.max(1);
        self
    }

    /// Whether runners pull in a pinned priority group (one active runner per projection,
    /// failover to standbys; the default), or as plain pullers of the durable consumer.
    pub fn pinned(mut self, pinned: bool) -> Self {
        self.pinned = pinned;
        self
    }

    /// How long the pinned runner may go without pulling before the server pins a standby
    /// (the failover time after a crash). Kept above the pull expiry.
    pub fn priority_timeout(mut self, timeout: Duration) -> Self {
        self.priority_timeout = timeout;
        self
    }

    /// How long one pull request lasts (kept below the priority timeout).
    pub fn pull_expiry(mut self, expiry: Duration) -> Self {
        self.pull_expiry = expiry.max(Duration::from_millis(100));
        self
    }

    /// Where a new consumer starts (an existing one keeps its checkpoint).
    pub fn start_from(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    /// How often a worker announces itself to the projection's other workers. A worker whose
    /// announcements stop for five heartbeats is gone and its partitions are shared among the
    /// others (who get them once the server unpins the gone worker after the priority timeout).
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat.max(Duration::from_millis(50));
        self
    }

    pub(super) fn effective_priority_timeout(&self) -> Duration {
        self.priority_timeout
            .max(self.pull_expiry.saturating_mul(2))
            .max(Duration::from_secs(1))
    }
}
