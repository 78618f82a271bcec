//! Where a projection starts and how its runner behaves.

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream;
use cqrs_core::StoreError;
use cqrs_core::projection::RetryPolicy;
use std::time::Duration;
use time::OffsetDateTime;

use super::unavailable_because;

/// Where a projection starts on a partition that has no checkpoint yet. A partition with a
/// checkpoint carries on after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// From the first event: a new projection built from history.
    #[default]
    Beginning,
    /// From this stream position (inclusive).
    Position(u64),
    /// From the first event stored at or after this time.
    Time(OffsetDateTime),
    /// Only events appended after the runner starts.
    New,
}

impl StartFrom {
    /// The checkpoint this start means: the last position counted as handled (0: none).
    pub(super) async fn checkpoint(self, stream: &stream::Stream) -> Result<u64, StoreError> {
        match self {
            Self::Beginning => Ok(0),
            Self::Position(position) => Ok(position.saturating_sub(1)),
            Self::New => {
                let mut stream = stream.clone();
                let info = stream
                    .info()
                    .await
                    .map_err(|e| unavailable_because("reading the stream info", e))?;
                Ok(info.state.last_sequence)
            }
            Self::Time(start_time) => {
                // A consumer created at a time starts at the first event stored at or after it,
                // and reports the position before that as delivered.
                let consumer = stream
                    .create_consumer(pull::Config {
                        deliver_policy: DeliverPolicy::ByStartTime { start_time },
                        ack_policy: AckPolicy::None,
                        inactive_threshold: Duration::from_secs(10),
                        memory_storage: true,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| {
                        unavailable_because("finding the first position at that time", e)
                    })?;
                let info = consumer.cached_info();
                let _deleted = stream.delete_consumer(&info.name).await;
                Ok(info.delivered.stream_sequence)
            }
        }
    }
}

/// Settings of a JetStream projection runner.
#[derive(Debug, Clone)]
pub struct ProjectionConfig {
    pub(super) retry: RetryPolicy,
    pub(super) max_batch: usize,
    pub(super) batch_linger: Duration,
    pub(super) commit_interval: Duration,
    pub(super) start: StartFrom,
    pub(super) heartbeat: Duration,
}

impl Default for ProjectionConfig {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            max_batch: 256,
            batch_linger: Duration::ZERO,
            commit_interval: Duration::from_millis(200),
            start: StartFrom::Beginning,
            heartbeat: Duration::from_secs(2),
        }
    }
}

impl ProjectionConfig {
    /// Defaults: [`RetryPolicy::default`], batches of up to 256 events of what is at hand (no
    /// waiting to fill one), checkpoints committed when a partition goes idle and at least
    /// every 200 ms while it is busy, partitions without a checkpoint from the beginning, a
    /// worker heartbeat every 2 s (a worker owns its partitions for 4 heartbeats after its last
    /// one, and the others take them over after 5).
    pub fn new() -> Self {
        Self::default()
    }

    /// How failing events are retried before they are parked.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The most events handed to [`Projection::apply_batch`](cqrs_core::Projection::apply_batch)
    /// at once (at least 1; 1 delivers events one by one).
    pub fn max_batch(mut self, max: usize) -> Self {
        self.max_batch = max.max(1);
        self
    }

    /// How long a batch that is not full waits for more events before it is handled. Zero (the
    /// default) handles what is at hand at once, so a quiet stream holds nothing back; a few
    /// milliseconds make fuller batches under a trickle of events, at that much latency.
    pub fn batch_linger(mut self, linger: Duration) -> Self {
        self.batch_linger = linger;
        self
    }

    /// How often a busy partition commits its checkpoint (an idle one commits at once). After a
    /// crash, the events handled since the last commit are delivered again.
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// Where a partition without a checkpoint starts (one with a checkpoint carries on after it).
    pub fn start_from(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    /// How often a worker announces itself to the projection's other workers. A worker whose
    /// announcements stop for five heartbeats is gone and its partitions are shared among the
    /// others; it stops handling events itself one heartbeat before that.
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat.max(Duration::from_millis(50));
        self
    }
}
