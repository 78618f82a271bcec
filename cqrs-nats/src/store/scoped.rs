//! The store's reads, routed through the permission guard, and the tenant-scoped read path for
//! per-tenant permissions ([`StoreConfig::tenant_scoped_reads`]).
//!
//! The default reads name the aggregate's subject in a JSON body, on API subjects that carry no
//! tenant (`$JS.API.DIRECT.GET.<stream>` for loads, `$JS.API.STREAM.MSG.GET.<stream>` for the
//! head of an aggregate), so a NATS permission cannot limit them to one tenant: whoever may
//! publish there may read every tenant. A tenant-scoped store uses only requests whose subject
//! names the tenant, where permissions see it:
//!
//! - the head of an aggregate: `$JS.API.DIRECT.GET.<stream>.<context>.events.*.<tenant>.<type>.<id>`
//!   (last message by subject; the partition token is left to the server, so a store configured
//!   with another partition count than the stream's reads the real head and says so instead of
//!   finding nothing);
//! - a page of events, of one aggregate or (for `read_all`) of the whole tenant: a request to
//!   the operator's [`TenantReadService`](crate::TenantReadService) on
//!   `<context>.reads.<tenant>`, which checks it and has the stream answer the tenant's inbox
//!   with one batched direct get (see [`crate::reads`]);
//! - snapshots: the direct get and the compare-and-set publish of the key's own subject (see
//!   [`super::snapshots`]).
//!
//! Nothing else: no stream info (which lists every subject on request), no consumer API (a grant
//! on consumers spans every consumer of the stream, the projections' included). Costs: a page
//! is one more hop than the operator's direct get, and the head read is a direct get, which a
//! lagging follower may serve: a stale head makes an append fail with a retryable
//! [`StoreError::Conflict`], never lose an update.

use super::failure::{backend, unavailable, unavailable_because};
use super::{Inner, StoreConfig};
use crate::headers;
use crate::permissions::{Violation, api};
use crate::reads::{READ_ERROR_HEADER, READ_PENDING_HEADER, READ_RETRYABLE_HEADER, ReadRequest};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::DirectGetErrorKind;
use async_nats::{Message, StatusCode};
use cqrs_core::{EventFilter, EventStream, StoreError, StreamId};
use futures::stream::{self as fstream, StreamExt, TryStreamExt};
use std::sync::Arc;

impl StoreConfig {
    /// Confines the store to requests whose subjects name the tenant, so that NATS permissions
    /// can limit a user to its own tenant (off by default; see the README's "Tenant isolation"
    /// for the grants): the store neither verifies nor creates the context at connect (an
    /// operator provisions it), reads heads and snapshots by direct get on their own subjects,
    /// and reads pages of events through the operator's
    /// [`TenantReadService`](crate::TenantReadService), which must be running.
    pub fn tenant_scoped_reads(mut self, scoped: bool) -> Self {
        self.scoped_reads = scoped;
        self
    }

    /// Whether [`tenant_scoped_reads`](Self::tenant_scoped_reads) is on.
    pub fn is_tenant_scoped(&self) -> bool {
        self.scoped_reads
    }
}

/// One page of a batched direct get as it came: the messages (with the stream's
/// `Nats-Sequence`, `Nats-Subject` and `Nats-Time-Stamp` headers), and how many more match after
/// them.
pub(crate) struct RawPage {
    pub(crate) messages: Vec<Message>,
    pub(crate) pending: u64,
}

impl Inner {
    /// The permission error of `operation` on the aggregate of `subject`.
    pub(super) fn denied(
        &self,
        operation: &'static str,
        subject: &str,
        violation: &Violation,
    ) -> StoreError {
        let mut reason = violation.to_string();
        let unscoped = [
            api::direct_get(self.stream_name()),
            api::msg_get(self.stream_name()),
        ];
        if unscoped.contains(&violation.subject) {
            reason.push_str(
                "; this read names the aggregate in a request body on an API subject without it, which permissions cannot confine to a tenant: connect with StoreConfig::tenant_scoped_reads(true)",
            );
        }
        StoreError::PermissionDenied {
            operation,
            stream: stream_of(subject),
            reason,
        }
    }
}

/// The aggregate `subject` names, as well as it can be told.
fn stream_of(subject: &str) -> StreamId {
    let tokens: Vec<&str> = subject.split('.').collect();
    match tokens.as_slice() {
        [_, "events", _, tenant, aggregate_type, id] => {
            let tenant =
                crate::subject::decode_tenant(tenant).unwrap_or(Some((*tenant).to_owned()));
            let id = crate::subject::decode_token(id).unwrap_or_else(|_| (*id).to_owned());
            StreamId::new(*aggregate_type, id).with_optional_tenant(tenant)
        }
        _ => StreamId::new("?", subject.to_owned()),
    }
}

impl Inner {
    /// Runs `request` on `subjects` for `operation` on `stream`: a permission violation on one
    /// of them is [`StoreError::PermissionDenied`] at once.
    pub(super) async fn guarded<T>(
        &self,
        operation: &'static str,
        stream: &StreamId,
        subjects: &[String],
        request: impl std::future::Future<Output = T>,
    ) -> Result<T, StoreError> {
        let subjects: Vec<&str> = subjects.iter().map(String::as_str).collect();
        self.guard
            .run(&subjects, request)
            .await
            .map_err(|violation| violation.store_error(operation, stream.clone()))
    }

    /// The version of the aggregate on `subject`, from one stream info request filtered to the
    /// subject (see [`EventStore::version_past`](cqrs_core::EventStore::version_past)): the
    /// answer's last sequence says whether the server that answered holds `position`, and its
    /// message count for the subject is the version (the stream refuses deletes and purges).
    pub(super) async fn version_past(
        &self,
        subject: &str,
        position: u64,
    ) -> Result<Option<u64>, StoreError> {
        const OP: &str = "read the version of an aggregate";
        let api = api::stream_info(self.stream_name());
        let ask = async {
            let mut info = self.stream.info_with_subjects(subject).await?;
            let reached = info.info.state.last_sequence >= position;
            let count = match futures::TryStreamExt::try_next(&mut info).await? {
                Some((_, count)) => u64::try_from(count).unwrap_or(u64::MAX),
                None => 0,
            };
            Ok::<_, async_nats::jetstream::stream::InfoError>(reached.then_some(count))
        };
        match self.guard.run(&[&api], ask).await {
            Ok(Ok(version)) => Ok(version),
            Ok(Err(e)) => Err(unavailable_because(
                OP,
                "asking the stream's leader for its info",
                e,
            )),
            Err(violation) => Err(self.denied(OP, subject, &violation)),
        }
    }

    /// The last message of `subject`: a leader read, or a direct get by subject on the scoped
    /// path.
    pub(super) async fn last_message(
        &self,
        subject: &str,
    ) -> Result<Option<StreamMessage>, StoreError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind as K;
        const OP: &str = "read last event";
        if self.config.scoped_reads {
            let any_partition = any_partition(subject);
            let api = api::direct_get_last(self.stream_name(), &any_partition);
            let read = self
                .stream
                .direct_get_last_for_subject(any_partition.as_str());
            return match self.guard.run(&[&api], read).await {
                Ok(Ok(message)) => Ok(Some(message)),
                Ok(Err(e)) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
                Ok(Err(e)) => Err(unavailable_because(OP, "reading the last message", e)),
                Err(violation) => Err(self.denied(OP, subject, &violation)),
            };
        }
        let api = api::msg_get(self.stream_name());
        let read = self.stream.get_last_raw_message_by_subject(subject);
        match self.guard.run(&[&api], read).await {
            Ok(Ok(message)) => Ok(Some(message)),
            Ok(Err(e)) if matches!(e.kind(), K::NoMessageFound) => Ok(None),
            Ok(Err(e)) => Err(unavailable_because(OP, "reading the last message", e)),
            Err(violation) => Err(self.denied(OP, subject, &violation)),
        }
    }

    /// Up to `batch` messages of `subject` from stream sequence `from_seq` on, and how many
    /// more match after them: one batched direct get, asked of the stream or, on the scoped path,
    /// of the tenant read service.
    pub(super) async fn page(
        &self,
        subject: &str,
        from_seq: u64,
        batch: usize,
    ) -> Result<(Vec<StreamMessage>, u64), StoreError> {
        const OP: &str = "load";
        let page = self.raw_page(subject, from_seq, batch).await?;
        let messages = page
            .messages
            .into_iter()
            .map(|m| StreamMessage::try_from(m).map_err(|e| backend(OP, e)))
            .collect::<Result<_, _>>()?;
        Ok((messages, page.pending))
    }

    /// [`Self::page`], the messages as they came.
    pub(crate) async fn raw_page(
        &self,
        subject: &str,
        from_seq: u64,
        batch: usize,
    ) -> Result<RawPage, StoreError> {
        const OP: &str = "load";
        let (target, body) = if self.config.scoped_reads {
            let tenant = subject.split('.').nth(3).unwrap_or_default();
            let target = self.subjects.tenant_reads_of_token(tenant);
            let request = ReadRequest {
                subject: subject.to_owned(),
                from_sequence: from_seq.max(1),
                batch,
            };
            (target, serde_json::to_vec(&request))
        } else {
            let request = serde_json::json!({
                "seq": from_seq.max(1),
                "next_by_subj": subject,
                "batch": batch,
            });
            (
                api::direct_get(self.stream_name()),
                serde_json::to_vec(&request),
            )
        };
        let body = body.map_err(|e| backend(OP, e))?;
        match self
            .guard
            .run(&[&target], self.batch(&target, subject, body))
            .await
        {
            Ok(page) => page,
            Err(violation) => Err(self.denied(OP, subject, &violation)),
        }
    }

    /// Sends one batched direct get request `body` for `subject` to `target` and collects the
    /// answer: the stream's (ended by its `204 EOB` status) or the tenant read service's relay
    /// of it (ended by a message with the `Cqrs-Read-Pending` header).
    async fn batch(
        &self,
        target: &str,
        subject: &str,
        body: Vec<u8>,
    ) -> Result<RawPage, StoreError> {
        const OP: &str = "load";
        let mux = self
            .replies
            .get_or_try_init(|| crate::replies::Replies::start(&self.client))
            .await
            .map_err(|e| unavailable_because(OP, "starting the reply subscription", e))?;
        let mut pending = mux.register();
        self.client
            .publish_with_reply(target.to_owned(), pending.reply_to.clone(), body.into())
            .await
            .map_err(|e| unavailable_because(OP, "sending the read request", e))?;
        let mut messages = Vec::with_capacity(self.config.load_batch);
        // One timer for the whole page: a timeout per message registered a timer per message.
        let deadline = tokio::time::sleep(self.config.request_timeout);
        tokio::pin!(deadline);
        loop {
            let reply = tokio::select! {
                biased;
                reply = pending.replies.recv() => reply,
                () = &mut deadline => {
                    return Err(unavailable(OP, format!("no complete answer to a read on `{target}` in time")));
                }
            }
            .ok_or_else(|| unavailable(OP, "connection closed during a read"))?;
            // Only the tenant read service answers with these headers; the stream's own answers
            // (the operator's load path) are not searched for them.
            if self.config.scoped_reads {
                let header = |name: &str| {
                    reply
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(name))
                        .map(|v| v.as_str().to_owned())
                };
                if let Some(refused) = header(READ_ERROR_HEADER) {
                    let reason = format!("the tenant read service answered: {refused}");
                    return Err(if header(READ_RETRYABLE_HEADER).is_some() {
                        unavailable(OP, reason)
                    } else {
                        StoreError::PermissionDenied {
                            operation: OP,
                            stream: stream_of(subject),
                            reason,
                        }
                    });
                }
                if let Some(more) = header(READ_PENDING_HEADER) {
                    let pending = more.parse::<u64>().map_err(|_| {
                        backend(
                            OP,
                            format!("`{READ_PENDING_HEADER}: {more}` is not a count"),
                        )
                    })?;
                    return Ok(RawPage { messages, pending });
                }
            }
            match reply.status {
                None | Some(StatusCode::OK) => messages.push(reply),
                Some(StatusCode::NOT_FOUND) => {
                    return Ok(RawPage {
                        messages,
                        pending: 0,
                    });
                }
                Some(status) if status.as_u16() == 204 => {
                    let pending = reply
                        .headers
                        .as_ref()
                        .and_then(|h| h.get_last("Nats-Num-Pending"))
                        .and_then(|v| v.as_str().parse::<u64>().ok())
                        .ok_or_else(|| {
                            backend(OP, "direct get end-of-batch without Nats-Num-Pending")
                        })?;
                    return Ok(RawPage { messages, pending });
                }
                Some(StatusCode::NO_RESPONDERS) if self.config.scoped_reads => {
                    return Err(unavailable(
                        OP,
                        format!(
                            "nothing answers on `{target}`: run cqrs_nats::TenantReadService on an operator connection for context `{}`, and import `{target}` into the tenant's account",
                            self.subjects.context()
                        ),
                    ));
                }
                Some(StatusCode::NO_RESPONDERS) => {
                    return Err(unavailable(OP, "no responders for direct get"));
                }
                Some(status) => {
                    return Err(unavailable(
                        OP,
                        format!(
                            "direct get answered {status}: {}",
                            reply.description.unwrap_or_default()
                        ),
                    ));
                }
            }
        }
    }

    /// `read_all` of a tenant-scoped store: the tenant's events (of one aggregate type where the
    /// filter names exactly one), page by page through the tenant read service; the rest of the
    /// filter is applied here. The first page is read at the call, and the read ends after as
    /// many messages as matched then (the first message's `Nats-Num-Pending` + 1): the head as
    /// of the call, without asking for the stream's state.
    pub(super) async fn read_all_scoped(
        self: &Arc<Self>,
        filter: &EventFilter,
        from_position: u64,
    ) -> Result<EventStream, StoreError> {
        struct Cursor {
            next_seq: u64,
            remaining: u64,
            page: Option<Vec<StreamMessage>>,
        }
        let invalid = |reason: String| StoreError::InvalidInput {
            stream: StreamId::new("*", "*"),
            reason,
        };
        let [tenant] = filter.tenants.iter().collect::<Vec<_>>()[..] else {
            return Err(invalid(
                "a tenant-scoped store reads one tenant's events at a time: filter with EventFilter::tenant(..)".to_owned(),
            ));
        };
        let aggregate_type = match filter.aggregate_types.iter().collect::<Vec<_>>()[..] {
            [one] => Some(one.as_str()),
            _ => None,
        };
        let subject = self
            .subjects
            .filter(Some(Some(tenant.as_str())), aggregate_type)
            .map_err(|e| invalid(e.to_string()))?;
        let start = from_position.max(1);
        let (first, pending) = self.page(&subject, start, self.config.load_batch).await?;
        // How many messages matched at the call: what the server counted behind the first.
        let matched = match first.first() {
            Some(message) => message
                .headers
                .get_last("Nats-Num-Pending")
                .and_then(|v| v.as_str().parse::<u64>().ok())
                .map_or(first.len() as u64 + pending, |behind| behind + 1),
            None => 0,
        };
        let inner = Arc::clone(self);
        let filter = filter.clone();
        let cursor = Cursor {
            next_seq: start,
            remaining: matched,
            page: Some(first),
        };
        let pages = fstream::try_unfold(cursor, move |mut cursor| {
            let inner = Arc::clone(&inner);
            let subject = subject.clone();
            let filter = filter.clone();
            async move {
                if cursor.remaining == 0 {
                    return Ok::<_, StoreError>(None);
                }
                let messages = match cursor.page.take() {
                    Some(first) => first,
                    None => {
                        inner
                            .page(&subject, cursor.next_seq, inner.config.load_batch)
                            .await?
                            .0
                    }
                };
                if messages.is_empty() {
                    return Ok(None);
                }
                let mut events = Vec::with_capacity(messages.len());
                for message in &messages {
                    if cursor.remaining == 0 {
                        break;
                    }
                    cursor.remaining -= 1;
                    let event = headers::decode(&inner.subjects, message)?;
                    cursor.next_seq = event.position + 1;
                    if filter.matches(&event) {
                        events.push(Ok::<_, StoreError>(event));
                    }
                }
                Ok(Some((fstream::iter(events), cursor)))
            }
        });
        Ok(pages.try_flatten().boxed())
    }
}

/// `subject`, a stored aggregate subject, with its partition token replaced by `*`.
fn any_partition(subject: &str) -> String {
    let mut tokens: Vec<&str> = subject.split('.').collect();
    if let Some(partition) = tokens.get_mut(2) {
        *partition = "*";
    }
    tokens.join(".")
}
