//! Reads checked against the stream's leader where a replica's word is not enough.
//!
//! A consumer reads the store of the one server that hosts it, and a direct get may be
//! answered by any replica. A replica that was cut off, or is still catching up, holds a
//! prefix of the stream: what it delivers comes in order, but its "nothing more" may be early,
//! and the nemesis (issue 17, partitions of the leader) saw consumers on a replica that had
//! caught up stay silent until the next event was written. It caught three wrong answers: a
//! rebuild (`read_all` ended at a consumer's "nothing pending") came back short, a runner's
//! `wait_for` took a lagging replica's empty direct get for "this partition has nothing left",
//! and partition readers sat silent for good at the end of a workload. Where "nothing more"
//! decides something, the stream's leader is asked ([`first_after`]: a non-direct
//! `STREAM.MSG.GET` with `next_by_subj`, which only the leader answers); a reader's first event
//! is checked against it too ([`Watch`]), so that a consumer placed past events is caught
//! before anything after them is used.
//!
//! The leader's word has one limit: a leader cut off from the rest of its cluster answers as
//! leader, from its old state, until it notices (7–18 s measured), so a client connected to it
//! hears "nothing more" early in that window. Commands guard against it with the position their
//! caller has seen ([`cqrs_core::CommandMetadata::seen_position`]).

use crate::headers;
use crate::store::{unavailable, unavailable_because};
use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{RawMessageErrorKind, Stream};
use cqrs_core::StoreError;
use futures::StreamExt;
use std::time::Duration;

/// The first event after `after` on any of `filters`, as the stream's leader holds it (`None`:
/// none yet). One request per filter subject, concurrently.
///
/// # Errors
///
/// The leader did not answer (none elected, or cut off from this client), or refused.
pub(crate) async fn first_after<I: Sync>(
    stream: &Stream<I>,
    filters: &[String],
    after: u64,
) -> Result<Option<u64>, async_nats::jetstream::stream::RawMessageError> {
    let asks = filters.iter().map(|filter| async move {
        match stream
            .raw_message_builder()
            .sequence(after + 1)
            .next_by_subject(filter.clone())
            .send()
            .await
        {
            Ok(message) => Ok(Some(message.sequence)),
            Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(error) => Err(error),
        }
    });
    let firsts = futures::future::try_join_all(asks).await?;
    Ok(firsts.into_iter().flatten().min())
}

/// What the leader says about the events between the last one a reader read and the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gap {
    /// Nothing in between: the next event is the leader's first after the last.
    Closed,
    /// The leader holds an event in between, first at this position: the reader skipped it.
    Skipped(u64),
}

/// How long a reader waits for a leader that does not hold the event it was handed yet (a new
/// leader still applying what it committed): 20 asks, 50 ms apart.
const LEADER_BEHIND_ASKS: u32 = 20;
const LEADER_BEHIND_PAUSE: Duration = Duration::from_millis(50);

/// Tracks where a reader must ask the leader: before its first event, and before each event
/// that follows one delivered with nothing pending.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Watch {
    /// The position of the last event read (the position before the first, at the start).
    last: u64,
    /// Whether the next event follows a moment the consumer had nothing more.
    check_next: bool,
}

/// Why an event could not be checked.
#[derive(Debug)]
pub(crate) enum Unchecked {
    /// The leader did not answer or refused.
    Leader(async_nats::jetstream::stream::RawMessageError),
    /// The leader still does not hold the event after a second of asking.
    LeaderBehind {
        /// The event the reader was handed.
        position: u64,
    },
}

impl std::fmt::Display for Unchecked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Leader(error) => write!(
                f,
                "cannot ask the stream's leader whether the reader skipped events: {error}"
            ),
            Self::LeaderBehind { position } => write!(
                f,
                "the stream's leader does not hold event {position}, which a replica delivered, yet"
            ),
        }
    }
}

impl Watch {
    /// A reader that starts after position `after` (0 for the beginning).
    pub(crate) fn after(after: u64) -> Self {
        Self {
            last: after,
            check_next: true,
        }
    }

    /// The position of the last event read.
    pub(crate) fn last(&self) -> u64 {
        self.last
    }

    /// Whether the next event must be checked before it is used.
    pub(crate) fn must_check(&self) -> bool {
        self.check_next
    }

    /// Records an event read at `position` with `pending` more behind it on its consumer.
    pub(crate) fn read(&mut self, position: u64, pending: u64) {
        self.last = self.last.max(position);
        self.check_next = pending == 0;
    }

    /// Asks the leader about the events between the last one read and `position`, waiting a
    /// moment for a leader that does not hold `position` yet.
    ///
    /// # Errors
    ///
    /// [`Unchecked`]: the leader did not answer, or still lacks `position`.
    pub(crate) async fn check<I: Sync>(
        &self,
        stream: &Stream<I>,
        filters: &[String],
        position: u64,
    ) -> Result<Gap, Unchecked> {
        for ask in 1..=LEADER_BEHIND_ASKS {
            match first_after(stream, filters, self.last)
                .await
                .map_err(Unchecked::Leader)?
            {
                Some(first) if first == position => return Ok(Gap::Closed),
                Some(first) if first < position => return Ok(Gap::Skipped(first)),
                // The leader has nothing up to `position` yet.
                _ if ask < LEADER_BEHIND_ASKS => tokio::time::sleep(LEADER_BEHIND_PAUSE).await,
                _ => {}
            }
        }
        Err(Unchecked::LeaderBehind { position })
    }
}

impl Unchecked {
    /// The error of `operation` that could not check its read.
    fn into_store_error(self, operation: &'static str) -> StoreError {
        match self {
            Self::Leader(error) => unavailable_because(
                operation,
                "asking the stream's leader whether the read skipped events",
                error,
            ),
            behind @ Self::LeaderBehind { .. } => unavailable(operation, behind),
        }
    }
}

/// How long a read waits for an event the leader holds before it calls its consumer stalled.
const STALLED_AFTER: Duration = Duration::from_secs(5);

/// An ordered consumer's events read up to a head (the stream's last position as of the call),
/// checked against the leader where its server could have skipped some (see the module docs),
/// and read on past a moment with nothing pending while the leader holds more up to the head
/// (a replica that lags says "nothing pending" early).
pub(crate) struct ToHead<I> {
    operation: &'static str,
    stream: Stream<I>,
    filters: Vec<String>,
    head: u64,
    messages: pull::Ordered,
    watch: Watch,
    /// The leader's first event after the last one read, when it was asked before the next
    /// event arrived (a consumer that had nothing pending).
    expected: Option<u64>,
    /// Whether an event was read yet.
    read_any: bool,
}

impl<I: Sync> ToHead<I> {
    /// Reads `consumer` (filtered on `filters`) up to `head`, from where its server placed its
    /// start; `None` when the leader holds nothing for it up to `head`.
    ///
    /// # Errors
    ///
    /// The consumer could not be read, or the leader not asked.
    pub(crate) async fn open(
        operation: &'static str,
        stream: Stream<I>,
        filters: Vec<String>,
        head: u64,
        consumer: async_nats::jetstream::consumer::Consumer<pull::OrderedConfig>,
    ) -> Result<Option<Self>, StoreError> {
        // What the consumer starts after (a start time resolved by its server).
        let after = consumer.cached_info().delivered.stream_sequence;
        if after >= head {
            return Ok(None);
        }
        let mut expected = None;
        if consumer.cached_info().num_pending == 0 {
            let first = first_after(&stream, &filters, after).await.map_err(|e| {
                unavailable_because(
                    operation,
                    "asking the stream's leader for the first event",
                    e,
                )
            })?;
            match first {
                Some(first) if first <= head => expected = Some(first),
                _ => return Ok(None),
            }
        }
        let messages = consumer
            .messages()
            .await
            .map_err(|e| unavailable_because(operation, "reading the consumer", e))?;
        Ok(Some(Self {
            operation,
            stream,
            filters,
            head,
            messages,
            watch: Watch::after(after),
            expected,
            read_any: false,
        }))
    }

    /// The next message up to the head; `None` past it.
    ///
    /// # Errors
    ///
    /// The consumer failed or ended early, delivered something unreadable, skipped events the
    /// leader holds (read again: the replica is catching up), or the leader could not be asked.
    pub(crate) async fn next(&mut self) -> Result<Option<StreamMessage>, StoreError> {
        let op = self.operation;
        if self.watch.last() >= self.head {
            return Ok(None);
        }
        // The consumer had nothing more after an event: does the leader hold more up to the
        // head? (Not asked before the first event: `open` did, or the consumer had some.)
        if self.watch.must_check() && self.expected.is_none() && self.read_any {
            let first = first_after(&self.stream, &self.filters, self.watch.last())
                .await
                .map_err(|e| unavailable_because(op, "asking the stream's leader for more", e))?;
            match first {
                Some(first) if first <= self.head => self.expected = Some(first),
                _ => {
                    self.watch.last = self.head;
                    return Ok(None);
                }
            }
        }
        let next = match self.expected {
            // The leader holds it: a consumer that stays silent is stalled (its server lags).
            Some(first) => tokio::time::timeout(STALLED_AFTER, self.messages.next())
                .await
                .map_err(|_| {
                    unavailable(
                        op,
                        format!(
                            "the consumer delivered nothing for {} s while the stream's leader holds event {first}: its server lags; read again",
                            STALLED_AFTER.as_secs()
                        ),
                    )
                })?,
            None => self.messages.next().await,
        };
        let Some(message) = next else {
            return Err(unavailable(op, "the consumer ended before the head"));
        };
        let message = message.map_err(|e| unavailable_because(op, "reading the consumer", e))?;
        let headers::Delivered {
            message: stored,
            pending,
            number,
        } = headers::delivered(message).map_err(|e| unavailable(op, e))?;
        // async-nats makes the ordered consumer again (numbering from 1) after a gap or a
        // missed heartbeat, on whichever server the cluster picks: its first event is checked.
        if number == 1 {
            self.watch.check_next = true;
        }
        if stored.sequence > self.head {
            self.watch.last = self.head;
            return Ok(None);
        }
        if self.watch.must_check() && self.expected.take() != Some(stored.sequence) {
            match self
                .watch
                .check(&self.stream, &self.filters, stored.sequence)
                .await
            {
                Ok(Gap::Closed) => {}
                Ok(Gap::Skipped(first)) => {
                    return Err(unavailable(
                        op,
                        format!(
                            "the consumer's server (a replica catching up) skipped events: it delivered event {} after {}, the stream's leader holds event {first} in between; read again",
                            stored.sequence,
                            self.watch.last()
                        ),
                    ));
                }
                Err(unchecked) => return Err(unchecked.into_store_error(op)),
            }
        }
        self.expected = None;
        self.read_any = true;
        self.watch.read(stored.sequence, pending);
        Ok(Some(stored))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_event_and_events_after_a_quiet_moment_are_checked() {
        let mut watch = Watch::after(10);
        assert!(watch.must_check(), "a reader's first event");
        watch.read(14, 3);
        assert!(!watch.must_check(), "the consumer had more at hand");
        watch.read(15, 0);
        assert!(watch.must_check(), "the consumer had nothing more");
        assert_eq!(watch.last(), 15);
        watch.read(12, 5);
        assert_eq!(watch.last(), 15, "never backwards");
    }

    /// `g.a` at 1, 3, 4; `g.b` at 2, 5.
    async fn stream_with_gaps(
        server: &cqrs_test_server::NatsServer,
    ) -> async_nats::jetstream::stream::Stream {
        let client = async_nats::connect(server.url())
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        let js = async_nats::jetstream::new(client);
        let stream = js
            .create_stream(async_nats::jetstream::stream::Config {
                name: "G".to_owned(),
                subjects: vec!["g.>".to_owned()],
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("stream: {e}"));
        for subject in ["g.a", "g.b", "g.a", "g.a", "g.b"] {
            js.publish(subject, "x".into())
                .await
                .unwrap_or_else(|e| panic!("publish: {e}"))
                .await
                .unwrap_or_else(|e| panic!("ack: {e}"));
        }
        stream
    }

    #[tokio::test]
    async fn the_leader_names_the_first_event_a_reader_skipped() {
        let server = cqrs_test_server::NatsServer::start()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let stream = stream_with_gaps(&server).await;
        let a = ["g.a".to_owned()];
        let ask = |after| first_after(&stream, &a, after);
        assert_eq!(ask(0).await.ok(), Some(Some(1)));
        assert_eq!(ask(1).await.ok(), Some(Some(3)), "over g.b's 2");
        assert_eq!(ask(4).await.ok(), Some(None), "nothing after the last");
        let both = ["g.b".to_owned(), "g.a".to_owned()];
        assert_eq!(
            first_after(&stream, &both, 1).await.ok(),
            Some(Some(2)),
            "the first over every filter subject"
        );

        let (stream, a) = (&stream, &a);
        let check =
            |after, position| async move { Watch::after(after).check(stream, a, position).await };
        assert_eq!(check(1, 3).await.ok(), Some(Gap::Closed), "2 is not g.a");
        assert_eq!(check(0, 3).await.ok(), Some(Gap::Skipped(1)));
        assert_eq!(check(1, 4).await.ok(), Some(Gap::Skipped(3)));
        assert!(
            matches!(
                check(4, 6).await,
                Err(Unchecked::LeaderBehind { position: 6 })
            ),
            "the leader never held 6"
        );
    }
}
