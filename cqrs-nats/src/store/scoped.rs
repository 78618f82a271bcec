//! The store's reads, routed through the permission guard, and the subject-scoped read path for
//! per-tenant permissions ([`StoreConfig::tenant_scoped_reads`]).
//!
//! The default reads name the aggregate's subject in a JSON body, on API subjects that carry no
//! tenant (`$JS.API.DIRECT.GET.<stream>` for loads, `$JS.API.STREAM.MSG.GET.<stream>` for the
//! head of an aggregate), so a NATS permission cannot limit them to one tenant: whoever may
//! publish there may read every tenant. The scoped path puts the subject into the API subject,
//! where permissions see it:
//!
//! - the head of an aggregate: `$JS.API.DIRECT.GET.<stream>.<subject>` (last message by
//!   subject; the server accepts no sequence, batch or other subject on it —
//!   `processDirectGetLastBySubjectRequest` in nats-server's `stream.go`);
//! - a page of its events: an ephemeral pull consumer created on
//!   `$JS.API.CONSUMER.CREATE.<stream>.<name>.<subject>` (the server refuses a body whose filter
//!   differs from the subject's, error 10131), read with one pull on
//!   `$JS.API.CONSUMER.MSG.NEXT.<stream>.<name>`. The consumer (memory storage, one replica, no
//!   acks) is not deleted — deleting needs `$JS.API.CONSUMER.DELETE.<stream>.*`, which would let a
//!   tenant delete any consumer — but removed by the server after [`LOAD_CONSUMER_IDLE`].
//!
//! Costs: a page is a consumer create plus a pull (a few milliseconds) instead of one direct get
//! (a tenth of one), and the head read is a direct get, which a lagging follower may serve: a
//! stale head makes an append fail with a retryable [`StoreError::Conflict`], never lose an
//! update.

use super::{Inner, StoreConfig, backend, chain_text, unavailable};
use crate::permissions::{Violation, api};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::DirectGetErrorKind;
use cqrs_core::{StoreError, StreamId};
use futures::StreamExt;
use std::time::Duration;
use uuid::Uuid;

/// How long the server keeps an idle load consumer of the scoped path.
pub(super) const LOAD_CONSUMER_IDLE: Duration = Duration::from_secs(5);

impl StoreConfig {
    /// Reads through subject-scoped JetStream API subjects only, so that NATS permissions can
    /// confine a user to its tenants' subjects (off by default; see the README's "Tenant
    /// isolation" for the permissions). Loads then cost a consumer create per page of events
    /// instead of one direct get.
    pub fn tenant_scoped_reads(mut self, scoped: bool) -> Self {
        self.scoped_reads = scoped;
        self
    }
}

impl Inner {
    /// The permission error of `operation` on the aggregate of `subject`.
    pub(super) fn denied(
        &self,
        operation: &'static str,
        subject: &str,
        violation: &Violation,
    ) -> StoreError {
        let stream = match self.subjects.parse(subject) {
            Ok((tenant, aggregate_type, id)) => {
                StreamId::new(aggregate_type, id).with_optional_tenant(tenant)
            }
            Err(_) => StreamId::new("?", subject.to_owned()),
        };
        let mut reason = violation.to_string();
        let unscoped = [
            api::direct_get(&self.stream_name),
            api::msg_get(&self.stream_name),
        ];
        if unscoped.contains(&violation.subject) {
            reason.push_str(
                "; this read names the aggregate in a request body on an API subject without it, which permissions cannot confine to a tenant: connect with StoreConfig::tenant_scoped_reads(true)",
            );
        }
        StoreError::PermissionDenied {
            operation,
            stream,
            reason,
        }
    }

    /// The subjects reading and writing the snapshot under `key` use.
    pub(super) fn snapshot_subjects(&self, key: &str) -> [String; 3] {
        let bucket = self.config.bucket_name();
        let kv_subject = format!("$KV.{bucket}.{key}");
        [
            api::direct_get_last(&format!("KV_{bucket}"), &kv_subject),
            api::msg_get(&format!("KV_{bucket}")),
            kv_subject,
        ]
    }

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

    /// The last message of `subject`: a leader read, or a direct get by subject on the scoped
    /// path.
    pub(super) async fn last_message(
        &self,
        subject: &str,
    ) -> Result<Option<StreamMessage>, StoreError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind as K;
        const OP: &str = "read last event";
        if self.config.scoped_reads {
            let api = api::direct_get_last(&self.stream_name, subject);
            let read = self.stream.direct_get_last_for_subject(subject);
            return match self.guard.run(&[&api], read).await {
                Ok(Ok(message)) => Ok(Some(message)),
                Ok(Err(e)) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
                Ok(Err(e)) => Err(unavailable(OP, chain_text(&e))),
                Err(violation) => Err(self.denied(OP, subject, &violation)),
            };
        }
        let api = api::msg_get(&self.stream_name);
        let read = self.stream.get_last_raw_message_by_subject(subject);
        match self.guard.run(&[&api], read).await {
            Ok(Ok(message)) => Ok(Some(message)),
            Ok(Err(e)) if matches!(e.kind(), K::NoMessageFound) => Ok(None),
            Ok(Err(e)) => Err(unavailable(OP, chain_text(&e))),
            Err(violation) => Err(self.denied(OP, subject, &violation)),
        }
    }

    /// Up to `batch` messages of `subject` from stream sequence `from_seq` on, and how many
    /// more match after them.
    pub(super) async fn page(
        &self,
        subject: &str,
        from_seq: u64,
        batch: usize,
    ) -> Result<(Vec<StreamMessage>, u64), StoreError> {
        const OP: &str = "load";
        if self.config.scoped_reads {
            return self.consumer_page(subject, from_seq, batch).await;
        }
        let api = api::direct_get(&self.stream_name);
        match self
            .guard
            .run(&[&api], self.direct_batch(subject, from_seq, batch))
            .await
        {
            Ok(page) => page,
            Err(violation) => Err(self.denied(OP, subject, &violation)),
        }
    }

    /// A page through an ephemeral consumer filtered to `subject`, created on the API subject
    /// that names the filter.
    async fn consumer_page(
        &self,
        subject: &str,
        from_seq: u64,
        batch: usize,
    ) -> Result<(Vec<StreamMessage>, u64), StoreError> {
        const OP: &str = "load";
        let name = format!("cqrs-load-{}", Uuid::now_v7().simple());
        let create = api::consumer_create(&self.stream_name, &name, subject);
        let next = api::consumer_next(&self.stream_name, &name);
        let config = pull::Config {
            name: Some(name),
            filter_subject: subject.to_owned(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from_seq.max(1),
            },
            ack_policy: AckPolicy::None,
            inactive_threshold: LOAD_CONSUMER_IDLE,
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        };
        let read = async {
            let consumer = self
                .stream
                .create_consumer(config)
                .await
                .map_err(|e| unavailable(OP, chain_text(&e)))?;
            let available = consumer.cached_info().num_pending;
            if available == 0 {
                return Ok((Vec::new(), 0));
            }
            let want = usize::try_from(available).unwrap_or(usize::MAX).min(batch);
            let mut messages = consumer
                .batch()
                .max_messages(want)
                .expires(self.config.request_timeout)
                .messages()
                .await
                .map_err(|e| unavailable(OP, chain_text(&e)))?;
            let mut page = Vec::with_capacity(want);
            let mut pending = available;
            while page.len() < want {
                let Some(message) = messages.next().await else {
                    break;
                };
                let message = message.map_err(|e| unavailable(OP, chain_text(&*e)))?;
                let info = message.info().map_err(|e| backend(OP, e.to_string()))?;
                let (sequence, time) = (info.stream_sequence, info.published);
                pending = info.pending;
                page.push(StreamMessage {
                    subject: message.message.subject.clone(),
                    sequence,
                    headers: message.message.headers.clone().unwrap_or_default(),
                    payload: message.message.payload.clone(),
                    time,
                });
            }
            if page.is_empty() {
                return Err(unavailable(
                    OP,
                    format!(
                        "{available} events pending on the load consumer, none delivered in time"
                    ),
                ));
            }
            Ok((page, pending))
        };
        match self.guard.run(&[&create, &next], read).await {
            Ok(page) => page,
            Err(violation) => Err(self.denied(OP, subject, &violation)),
        }
    }
}
