//! Loads: an aggregate's events page by page, its tail by an ordered consumer, its last message.

use super::Inner;
use super::failure::{backend, unavailable, unavailable_because};
use crate::headers;
use crate::permissions::api;
use async_nats::jetstream::{self, stream};
use cqrs_core::{EventStream, RecordedEvent, StoreError};
use futures::FutureExt;
use futures::stream::{self as fstream, StreamExt, TryStreamExt};
use std::sync::Arc;
use tracing::Instrument;
use uuid::Uuid;

/// How many events must follow the first page of a load for the rest to be read by a consumer
/// rather than page by page: creating the consumer costs about as much as a page.
const LONG_TAIL: u64 = 2_000;

/// How often a lookup that a lagging replica answered short is read again (after 20 ms, 40 ms,
/// ... 640 ms: about 1.3 s in all) before it is reported `Unavailable`.
const STALE_LOOKUP_RETRIES: u32 = 6;

/// Where the next events of a load come from.
enum Source {
    /// The first page, fetched when the stream is first polled: nothing to overlap it with.
    First(u64),
    /// A page being fetched while the one before it is decoded.
    Page(Prefetch),
    /// An ordered consumer reading the rest.
    Tail(Box<Tail>),
    /// Nothing more.
    Done,
}

impl Source {
    /// What follows a page that says `pending` more messages match: nothing, the next page
    /// (already on its way while this one is decoded), or a consumer for a long tail.
    async fn after(
        inner: &Arc<Inner>,
        subject: &str,
        page: &[jetstream::message::StreamMessage],
        pending: u64,
    ) -> Result<Self, StoreError> {
        let Some(last) = page.last().filter(|_| pending > 0) else {
            return Ok(Self::Done);
        };
        let next = last.sequence + 1;
        if pending > LONG_TAIL && !inner.config.scoped_reads {
            match Tail::open(inner, subject, next, pending).await {
                Ok(tail) => return Ok(Self::Tail(Box::new(tail))),
                // A user who may read but not create consumers: page on.
                Err(StoreError::PermissionDenied { reason, .. }) => {
                    tracing::debug!(%reason, "reading the rest page by page");
                }
                Err(other) => return Err(other),
            }
        }
        Ok(Self::Page(Prefetch::start(inner, subject.to_owned(), next)))
    }
}

/// The rest of a long aggregate, read by an ordered consumer filtered to its subject.
struct Tail {
    messages: jetstream::consumer::pull::Ordered,
    remaining: u64,
    stream: stream::Stream<()>,
    name: String,
}

impl Tail {
    async fn open(
        inner: &Arc<Inner>,
        subject: &str,
        from_seq: u64,
        remaining: u64,
    ) -> Result<Self, StoreError> {
        use jetstream::consumer::{DeliverPolicy, pull};
        const OP: &str = "load";
        // Named, so that the filter is part of the create's API subject (see `read_all`).
        let name = format!("cqrs-load-{}", Uuid::now_v7().simple());
        let create = [
            api::consumer_create(inner.stream_name(), &name, subject),
            format!("$JS.API.CONSUMER.CREATE.{}.{name}", inner.stream_name()),
        ];
        let config = pull::OrderedConfig {
            name: Some(name.clone()),
            filter_subject: subject.to_owned(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from_seq,
            },
            ..Default::default()
        };
        let create: Vec<&str> = create.iter().map(String::as_str).collect();
        let consumer = inner
            .guard
            .run(&create, inner.stream.create_consumer(config))
            .await
            .map_err(|violation| inner.denied(OP, subject, &violation))?
            .map_err(|e| unavailable_because(OP, "creating the consumer", e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| unavailable_because(OP, "reading the consumer", e))?;
        Ok(Self {
            messages,
            remaining,
            stream: inner.stream.clone(),
            name,
        })
    }

    /// Up to `max` messages: those already delivered, at least one.
    async fn next_chunk(
        &mut self,
        max: usize,
        timeout: std::time::Duration,
    ) -> Result<Vec<jetstream::message::StreamMessage>, StoreError> {
        const OP: &str = "load";
        let mut chunk = Vec::with_capacity(max.min(usize::try_from(self.remaining).unwrap_or(max)));
        while self.remaining > 0 && chunk.len() < max {
            let next = if chunk.is_empty() {
                // The same patience as for a page: a stalled consumer is `Unavailable`.
                tokio::time::timeout(timeout, self.messages.next())
                    .await
                    .map_err(|_| unavailable(OP, "the consumer delivered nothing in time"))?
            } else {
                match self.messages.next().now_or_never() {
                    Some(next) => next,
                    None => break,
                }
            };
            let message = next
                .ok_or_else(|| unavailable(OP, "the consumer ended before the aggregate's end"))?
                .map_err(|e| unavailable_because(OP, "reading the consumer", e))?;
            chunk.push(headers::from_consumer(message).map_err(|e| backend(OP, e))?);
            self.remaining -= 1;
        }
        Ok(chunk)
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        // The server would remove it after its inactivity threshold; free it now.
        let (stream, name) = (self.stream.clone(), std::mem::take(&mut self.name));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = stream.delete_consumer(&name).await;
            });
        }
    }
}

/// One page of an aggregate's messages, fetched on a task of its own so that it travels while
/// the page before it is decoded; aborted when the load is dropped.
struct Prefetch {
    task:
        tokio::task::JoinHandle<Result<(Vec<jetstream::message::StreamMessage>, u64), StoreError>>,
}

impl Prefetch {
    fn start(inner: &Arc<Inner>, subject: String, from_seq: u64) -> Self {
        let inner = Arc::clone(inner);
        let span = tracing::debug_span!(
            "cqrs.nats.load_page",
            subject = %subject,
            from_sequence = from_seq,
            events = tracing::field::Empty,
            pending = tracing::field::Empty,
        );
        let task = tokio::spawn(
            async move {
                let page = inner
                    .page(&subject, from_seq, inner.config.load_batch)
                    .await;
                if let Ok((messages, pending)) = &page {
                    tracing::Span::current()
                        .record("events", messages.len())
                        .record("pending", pending);
                }
                page
            }
            .instrument(span),
        );
        Self { task }
    }

    async fn finish(mut self) -> Result<(Vec<jetstream::message::StreamMessage>, u64), StoreError> {
        match (&mut self.task).await {
            Ok(page) => page,
            Err(join) => Err(unavailable_because("load", "the page fetch failed", join)),
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Inner {
    /// The aggregate's last message, read from the stream leader.
    pub(super) async fn last(&self, subject: &str) -> Result<Option<RecordedEvent>, StoreError> {
        let Some(message) = self.last_message(subject).await? else {
            return Ok(None);
        };
        let event = headers::decode(&self.subjects, &message)?;
        self.remember(subject, &event);
        Ok(Some(event))
    }

    /// The events of `subject` from stream sequence `from_seq` on, lazily; `first_version` is
    /// the version the first yielded event must have (`None`: any, with events below
    /// `min_version` skipped).
    ///
    /// They come in pages of batched direct gets; while one page is decoded and consumed, the
    /// next is already being fetched. When the first page says that more than
    /// [`LONG_TAIL`] events follow, the rest is read by an ordered consumer instead, which
    /// streams at the server's pace (a batched direct get answers message by message, each
    /// with a full set of stream headers): exactly as many messages as the page said remain, so
    /// the load still ends on a count, never on a timeout.
    pub(super) fn events(
        self: &Arc<Self>,
        subject: String,
        from_seq: u64,
        min_version: u64,
        first_version: Option<u64>,
    ) -> EventStream {
        struct State {
            source: Source,
            expect_version: Option<u64>,
        }
        let inner = Arc::clone(self);
        let start = State {
            source: Source::First(from_seq.max(1)),
            expect_version: first_version,
        };
        fstream::try_unfold(start, move |mut state| {
            let inner = Arc::clone(&inner);
            let subject = subject.clone();
            async move {
                let messages = match std::mem::replace(&mut state.source, Source::Done) {
                    Source::Done => return Ok(None),
                    Source::First(from) => {
                        let (messages, pending) =
                            inner.page(&subject, from, inner.config.load_batch).await?;
                        state.source = Source::after(&inner, &subject, &messages, pending).await?;
                        messages
                    }
                    Source::Page(fetching) => {
                        let (messages, pending) = fetching.finish().await?;
                        state.source = Source::after(&inner, &subject, &messages, pending).await?;
                        messages
                    }
                    Source::Tail(mut tail) => {
                        let messages = tail
                            .next_chunk(inner.config.load_batch, inner.config.request_timeout)
                            .await?;
                        if tail.remaining > 0 {
                            state.source = Source::Tail(tail);
                        }
                        messages
                    }
                };
                let mut events = Vec::with_capacity(messages.len());
                let mut decoder = headers::Decoder::new(&inner.subjects);
                for message in &messages {
                    let event = decoder.decode(message)?;
                    if let Some(expected) = state.expect_version
                        && event.version != expected
                    {
                        return Err(StoreError::MalformedEnvelope {
                            position: event.position,
                            reason: format!(
                                "aggregate version {} where version {expected} was expected (versions must be gapless)",
                                event.version
                            ),
                        });
                    }
                    state.expect_version = Some(event.version + 1);
                    if event.version >= min_version {
                        events.push(Ok(event));
                    }
                }
                if let Some(last) = events.last().and_then(|e| e.as_ref().ok()) {
                    inner.remember(&subject, last);
                }
                Ok(Some((fstream::iter(events), state)))
            }
        })
        .try_flatten()
        .boxed()
    }

    /// The commit on `subject` whose events have the ids `ids` (in a row, from the first), if
    /// it exists.
    pub(super) async fn find_ids(
        self: &Arc<Self>,
        subject: &str,
        ids: &[Uuid],
    ) -> Result<Option<Vec<RecordedEvent>>, StoreError> {
        if ids.is_empty() {
            return Ok(None);
        }
        self.find_run(subject, |index| ids.get(index).copied())
            .await
    }

    /// The run of events on `subject` whose ids are `id_at(0)`, `id_at(1)`, ... (until `id_at`
    /// says `None` or an event has another id), if its first event exists.
    ///
    /// The pages come from direct gets, which any replica may answer, and a follower that lags
    /// ends its answer early. A lookup that finds nothing is therefore checked against the
    /// leader's last event on the subject: if the pages stopped short of it, the rest is read
    /// again after a pause (a lagging replica catches up within moments), and a lookup that
    /// still cannot see the leader's head is `Unavailable` (retryable) — never "not there",
    /// which would turn a retry into a wrong `Conflict` or a refusal.
    pub(super) async fn find_run(
        self: &Arc<Self>,
        subject: &str,
        id_at: impl Fn(usize) -> Option<Uuid>,
    ) -> Result<Option<Vec<RecordedEvent>>, StoreError> {
        const OP: &str = "look up a commit";
        let Some(first) = id_at(0) else {
            return Ok(None);
        };
        let mut from_seq = 1;
        for attempt in 0..=STALE_LOOKUP_RETRIES {
            let mut events = self.events(subject.to_owned(), from_seq, 0, None);
            let mut found: Vec<RecordedEvent> = Vec::new();
            while let Some(event) = events.try_next().await? {
                from_seq = event.position + 1;
                let wanted = if found.is_empty() {
                    Some(first)
                } else {
                    id_at(found.len())
                };
                if wanted == Some(event.event_id) {
                    found.push(event);
                    if id_at(found.len()).is_none() {
                        break;
                    }
                } else if !found.is_empty() {
                    break;
                }
            }
            if !found.is_empty() {
                return Ok(Some(found));
            }
            // Nothing found: complete only if the pages reached the leader's last event.
            match self.last(subject).await? {
                Some(head) if head.position >= from_seq => {
                    tracing::debug!(
                        subject,
                        read_up_to = from_seq - 1,
                        head = head.position,
                        attempt,
                        "a lagging replica answered the lookup; reading the rest again"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(20 << attempt)).await;
                }
                _ => return Ok(None),
            }
        }
        Err(unavailable(
            OP,
            format!(
                "the replicas that answered the read of `{subject}` lag behind its leader; retry"
            ),
        ))
    }
}
