//! The tenant read service: how a tenant-scoped store reads pages of its own tenant's events
//! without any access that reaches other tenants' data or the operator's consumers.
//!
//! # Why a service
//!
//! JetStream has no read API that both returns a run of messages and names its subject in the
//! API subject, where an export or a permission could confine it to one tenant: the batched
//! direct get names the subject in its JSON body (any tenant's could be read), the direct get by
//! subject returns only the last message, and a consumer — the only other way — is created and
//! pulled through API subjects whose consumer-name token a tenant's access would have to match
//! with a wildcard. Such access reaches every consumer of the stream: a tenant allowed
//! `$JS.API.CONSUMER.MSG.NEXT.<stream>.*` pulls from (and pins) the projections' consumers,
//! and one allowed `$JS.API.CONSUMER.CREATE.<stream>.*.<its filter>` can *update* any existing
//! consumer — re-filter a projection's consumer to its own subjects, pause it, or give it an
//! inactivity threshold (nats-server applies a create on an existing name as an update).
//!
//! So tenants ask the operator instead. The service runs on an operator connection and listens
//! in a queue group on `<context>.reads.*`; a tenant's account imports only its own
//! `<context>.reads.<tenant token>` (see [`crate::tenancy`]), which names the tenant.
//!
//! # Wire format
//!
//! Request on `<context>.reads.<tenant token>` with a reply subject, body:
//!
//! ```json
//! {"subject": "sales.events.3.acme.Order.o-1", "from_sequence": 1, "batch": 256}
//! ```
//!
//! `subject` is a stored aggregate subject of the request's tenant, or a filter over it whose
//! wildcards are whole `*` tokens (`sales.events.*.acme.Order.*`, `sales.events.*.acme.*.*`);
//! `batch` is at most 1000. The service checks the tenant token and the subject, runs one batched
//! direct get (`{"seq", "next_by_subj", "batch"}`) and relays the stream's answer to the reply
//! subject message by message, as the stream sent it (the event's headers plus `Nats-Sequence`,
//! `Nats-Subject`, `Nats-Time-Stamp`), then one empty message with the header
//! `Cqrs-Read-Pending` = how many more messages match. A refused request is answered with one
//! empty message whose `Cqrs-Read-Error` header says why (with `Cqrs-Read-Retryable: true` when
//! the stream could not be read and a retry may succeed). The service answers several messages
//! to one request: the export of `<context>.reads.<tenant>` must say `response_type: stream`.
//!
//! It relays instead of letting the stream answer the tenant's reply subject directly, because
//! nats-server does not let one client publish with another account's response subject
//! (`_R_.…`) as its reply.
//!
//! Cost: the operator's direct get plus one hop and a copy of each message, against a consumer
//! create and a pull per page on the path it replaces (see `examples/tenant_load_bench.rs`).

use crate::JetStreamEventStore;
use crate::service::{ServiceError, ServiceHandle};
use crate::subject::{Subjects, decode_tenant, decode_token, validate_name};
use async_nats::{HeaderMap, Message};
use serde::Deserialize;
use std::sync::Arc;
use tracing::Instrument;

/// The header of a refused read request's answer: why.
pub const READ_ERROR_HEADER: &str = "Cqrs-Read-Error";

/// Set (to `true`) on a refusal that a retry may overcome: the stream could not be read.
pub const READ_RETRYABLE_HEADER: &str = "Cqrs-Read-Retryable";

/// The header of the message that ends a page: how many more messages match after it.
pub const READ_PENDING_HEADER: &str = "Cqrs-Read-Pending";

/// Most messages one read request may ask for (the direct get allows 1024).
pub const MAX_READ_BATCH: usize = 1000;

/// A page request of a tenant-scoped store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadRequest {
    /// A stored aggregate subject of the tenant, or a filter over its subjects.
    pub subject: String,
    /// The first stream sequence to read.
    pub from_sequence: u64,
    /// Most messages to return (1 to [`MAX_READ_BATCH`]).
    pub batch: usize,
}

/// Serves tenant-scoped reads of one context for the tenants' stores (see the module docs).
#[derive(Debug, Clone)]
pub struct TenantReadService {
    store: JetStreamEventStore,
    concurrency: usize,
}

/// Why a request was not served.
struct Refusal {
    reason: String,
    retryable: bool,
}

impl Refusal {
    fn bad(reason: String) -> Self {
        Self {
            reason,
            retryable: false,
        }
    }
}

impl TenantReadService {
    /// A service reading `store`'s context with `store`'s connection, which must be an
    /// operator's: it reads the whole stream, and its partition count must be the stream's (a
    /// store opened without [`StoreConfig::tenant_scoped_reads`](crate::StoreConfig::tenant_scoped_reads)
    /// verified it at connect).
    pub fn new(store: &JetStreamEventStore) -> Self {
        Self {
            store: store.clone(),
            concurrency: 256,
        }
    }

    /// Handles up to `concurrency` requests at once (default 256).
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Subscribes in the queue group `cqrs-<context>-reads` and serves in the background.
    /// Returns once the subscription is confirmed by the server.
    pub async fn spawn(self) -> Result<ServiceHandle, ServiceError> {
        if self.store.is_tenant_scoped() {
            return Err(ServiceError::Misconfigured(
                "the tenant read service needs an operator's store; this one was opened with tenant_scoped_reads(true), so neither its access nor its partition count was verified".to_owned(),
            ));
        }
        let subjects = self.store.subjects();
        let subject = subjects.tenant_reads_all();
        let queue = crate::layout::reads_queue(subjects.context());
        let client = self.store.client().clone();
        let concurrency = self.concurrency;
        let service = Arc::new(self);
        crate::service::serve(client, subject, queue, concurrency, move |request| {
            let service = Arc::clone(&service);
            async move { service.serve_one(request).await }
        })
        .await
    }

    async fn serve_one(&self, request: Message) {
        let tenant_token = request
            .subject
            .as_str()
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        let span = tracing::debug_span!(
            "cqrs.nats.tenant_read",
            tenant = %tenant_token,
            subject = tracing::field::Empty,
            from_sequence = tracing::field::Empty,
            events = tracing::field::Empty,
        );
        self.relay(&tenant_token, request).instrument(span).await;
    }

    async fn relay(&self, tenant_token: &str, request: Message) {
        let Some(reply) = request.reply.as_ref().map(|r| r.as_str().to_owned()) else {
            tracing::debug!("tenant read without a reply subject ignored");
            return;
        };
        if !is_reply_subject(&reply) {
            tracing::warn!(%reply, "tenant read with a wildcard or system reply subject dropped");
            return;
        }
        let client = self.store.client();
        let answered = match self.read(tenant_token, &request.payload).await {
            Ok(page) => {
                tracing::Span::current().record("events", page.messages.len());
                let mut sent = Ok(());
                for message in page.messages {
                    let headers = message.headers.unwrap_or_default();
                    sent = client
                        .publish_with_headers(reply.clone(), headers, message.payload)
                        .await;
                    if sent.is_err() {
                        break;
                    }
                }
                match sent {
                    Ok(()) => {
                        let mut end = HeaderMap::new();
                        end.insert(READ_PENDING_HEADER, page.pending.to_string().as_str());
                        client
                            .publish_with_headers(reply, end, Vec::new().into())
                            .await
                    }
                    Err(e) => Err(e),
                }
            }
            Err(refusal) => {
                tracing::debug!(reason = %refusal.reason, retryable = refusal.retryable, "tenant read refused");
                let mut headers = HeaderMap::new();
                headers.insert(READ_ERROR_HEADER, refusal.reason.as_str());
                if refusal.retryable {
                    headers.insert(READ_RETRYABLE_HEADER, "true");
                }
                client
                    .publish_with_headers(reply, headers, Vec::new().into())
                    .await
            }
        };
        if let Err(error) = answered {
            tracing::warn!(%error, "could not answer a tenant read");
        }
    }

    /// The page tenant `tenant_token`'s `payload` asks for, or why not.
    async fn read(
        &self,
        tenant_token: &str,
        payload: &[u8],
    ) -> Result<crate::store::RawPage, Refusal> {
        if decode_tenant(tenant_token).is_err() {
            return Err(Refusal::bad(format!(
                "`{tenant_token}` is not a tenant token"
            )));
        }
        let read: ReadRequest = serde_json::from_slice(payload).map_err(|e| {
            Refusal::bad(format!(
                "the read request is not valid JSON of the documented shape: {e}"
            ))
        })?;
        if read.batch == 0 || read.batch > MAX_READ_BATCH {
            return Err(Refusal::bad(format!(
                "batch must be 1 to {MAX_READ_BATCH}, got {}",
                read.batch
            )));
        }
        let subject =
            scope(self.store.subjects(), tenant_token, &read.subject).map_err(Refusal::bad)?;
        tracing::Span::current()
            .record("subject", subject.as_str())
            .record("from_sequence", read.from_sequence);
        self.store
            .inner()
            .raw_page(&subject, read.from_sequence, read.batch)
            .await
            .map_err(|e| Refusal {
                retryable: e.is_retryable(),
                reason: e.to_string(),
            })
    }
}

/// Whether the service may answer on `reply`: a literal subject outside the `$` namespaces
/// (a tenant's request arrives with its account's response subject; nothing may make the
/// service publish to an API subject).
fn is_reply_subject(reply: &str) -> bool {
    !reply.starts_with('$')
        && reply.split('.').all(|token| {
            !token.is_empty()
                && token != "*"
                && token != ">"
                && !token.bytes().any(|b| b.is_ascii_whitespace())
        })
}

/// The stored subject or filter that `requested` may read for tenant `tenant_token`: a stored
/// aggregate subject of that tenant (its partition checked, or filled in where it is `*`), or
/// a filter over that tenant's subjects whose wildcards are whole `*` tokens, the aggregate id
/// only where the type is one too.
pub(crate) fn scope(
    subjects: &Subjects,
    tenant_token: &str,
    requested: &str,
) -> Result<String, String> {
    let refuse = |why: &str| {
        Err(format!(
            "`{requested}` is not a subject of tenant `{tenant_token}` this service reads: {why}"
        ))
    };
    let tokens: Vec<&str> = requested.split('.').collect();
    let [context, events, partition, tenant, aggregate_type, id] = tokens.as_slice() else {
        return refuse("expected <context>.events.<partition>.<tenant>.<type>.<id>");
    };
    if *context != subjects.context() || *events != "events" {
        return refuse("another context");
    }
    if *tenant != tenant_token {
        return refuse("another tenant");
    }
    let partition = match *partition {
        "*" => None,
        p => match p.parse::<u32>() {
            Ok(n) if n < subjects.partitions() && n.to_string() == p => Some(n),
            _ => return refuse("the partition must be `*` or a partition number of the stream"),
        },
    };
    match (*aggregate_type, *id) {
        ("*", "*") => Ok(requested.to_owned()),
        ("*", _) => refuse("an aggregate id needs an aggregate type"),
        (aggregate_type, id) => {
            if validate_name("aggregate type", aggregate_type).is_err() {
                return refuse("invalid aggregate type");
            }
            if id == "*" {
                return Ok(requested.to_owned());
            }
            if decode_token(id).is_err() {
                return refuse("invalid aggregate id token");
            }
            let published = format!("{context}.events.{tenant}.{aggregate_type}.{id}");
            let stored = subjects.stored(&published).map_err(|e| e.to_string())?;
            match partition {
                Some(p) if !stored.contains(&format!(".events.{p}.")) => Err(format!(
                    "`{requested}` names partition {p}, but the stream has {n} partitions and stores this aggregate under `{stored}`: configure the store with StoreConfig::partitions({n})",
                    n = subjects.partitions(),
                )),
                _ => Ok(stored),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subjects() -> Subjects {
        Subjects::with_partitions("bank", 8).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The stored subject of t1's `Account` `acc-1`.
    fn own_subject(s: &Subjects) -> String {
        s.aggregate(Some("t1"), "Account", "acc-1")
            .and_then(|published| s.stored(&published))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_tenant_reads_only_its_own_subjects() {
        let s = subjects();
        let own = own_subject(&s);
        assert_eq!(scope(&s, "t1", &own), Ok(own.clone()));
        // The partition may be left to the service.
        let any_partition = "bank.events.*.t1.Account.acc-1";
        assert_eq!(scope(&s, "t1", any_partition), Ok(own.clone()));
        for filter in [
            "bank.events.*.t1.*.*",
            "bank.events.*.t1.Account.*",
            "bank.events.3.t1.*.*",
        ] {
            assert_eq!(scope(&s, "t1", filter), Ok(filter.to_owned()), "{filter}");
        }
        for hostile in [
            own.replace(".t1.", ".t2."),
            "bank.events.*.t2.*.*".to_owned(),
            "bank.events.*.*.*.*".to_owned(),
            "bank.events.>".to_owned(),
            "bank.events.*.t1.>".to_owned(),
            "bank.events.*.t1.*.acc-1".to_owned(),
            "bank.events.*.t1.Account.>".to_owned(),
            "bank.events.*.t1.Account.acc-1.x".to_owned(),
            "other.events.*.t1.*.*".to_owned(),
            "bank.deadletter.*.t1.*.*".to_owned(),
            "bank.events.8.t1.*.*".to_owned(),
            "bank.events.03.t1.*.*".to_owned(),
            "bank.events.*.t1.Acc.ount.x".to_owned(),
            "bank.events.*.t1.Account.a_zz".to_owned(),
            String::new(),
        ] {
            assert!(scope(&s, "t1", &hostile).is_err(), "{hostile}");
        }
    }

    #[test]
    fn a_wrong_partition_names_the_streams_count() {
        let s = subjects();
        let own = own_subject(&s);
        let partition: u32 = own
            .split('.')
            .nth(2)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let wrong = own.replacen(
            &format!(".events.{partition}."),
            &format!(".events.{}.", (partition + 1) % 8),
            1,
        );
        let error = scope(&s, "t1", &wrong).unwrap_err();
        assert!(error.contains("StoreConfig::partitions(8)"), "{error}");
    }

    #[test]
    fn answers_go_only_to_literal_non_system_subjects() {
        assert!(is_reply_subject("_R_.abc.def"));
        assert!(is_reply_subject("_INBOX.abc.1"));
        for hostile in [
            "$JS.API.STREAM.DELETE.EVENTS_BANK",
            "$KV.SNAPSHOTS_BANK.t2.x",
            "_INBOX.*",
            "_INBOX.>",
            "_INBOX..x",
            "",
        ] {
            assert!(!is_reply_subject(hostile), "{hostile}");
        }
    }
}
