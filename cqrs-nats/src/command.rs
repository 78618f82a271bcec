//! Commands over NATS request/reply: a service that runs commands against a repository, in a
//! queue group so workers scale out, and a typed client. A web/worker split with no extra broker.
//!
//! # Wire format
//!
//! Request on `<context>.commands.<AggregateType>`; the body is the command as JSON (serde's
//! representation of the aggregate's command type), the headers carry its metadata:
//!
//! | header | meaning |
//! | --- | --- |
//! | `Cqrs-Aggregate-Id` | the target aggregate (required) |
//! | `Cqrs-Command-Id` | UUID of the command; also the idempotency key unless one is given. Absent: the service makes a root command with a fresh id |
//! | `Cqrs-Correlation-Id` | UUID of the flow (defaults to the command id) |
//! | `Cqrs-Causation-Id` | UUID of the event that triggered the command, if any |
//! | `Cqrs-Tenant`, `Cqrs-Actor`, `traceparent` | tenant, actor and W3C trace context |
//! | `Cqrs-Expected-Version` | the aggregate version the command is based on |
//! | `Cqrs-Idempotency-Key` | explicit idempotency key |
//! | `Cqrs-Extra-<key>` | anything else carried onto the events |
//!
//! The reply body is a [`CommandReply`] as JSON: `{"status":"committed", ...}` with the stored
//! events' ids, versions and positions, or `{"status":"failed","kind":..,"message":..}` with one
//! of the [`FailureKind`]s.

use async_nats::{HeaderMap, Message};
use cqrs_core::process::dispatched;
use cqrs_core::{
    Aggregate, CommandDispatcher, CommandError, CommandMetadata, EventStore, HandlerError,
    Repository, SeenPosition, Targeted,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Header names of command requests. Those that name a metadata field are the names of the
/// first wire format of events ([`crate::headers::legacy`]).
pub mod header {
    /// Target aggregate id.
    pub const AGGREGATE_ID: &str = "Cqrs-Aggregate-Id";
    /// Command id.
    pub const COMMAND_ID: &str = crate::headers::legacy::COMMAND_ID;
    /// Correlation id.
    pub const CORRELATION_ID: &str = crate::headers::legacy::CORRELATION_ID;
    /// Causation id.
    pub const CAUSATION_ID: &str = crate::headers::legacy::CAUSATION_ID;
    /// Tenant.
    pub const TENANT: &str = "Cqrs-Tenant";
    /// Actor.
    pub const ACTOR: &str = crate::headers::legacy::ACTOR;
    /// W3C trace context.
    pub const TRACEPARENT: &str = crate::headers::TRACEPARENT;
    /// Expected aggregate version.
    pub const EXPECTED_VERSION: &str = "Cqrs-Expected-Version";
    /// Idempotency key.
    pub const IDEMPOTENCY_KEY: &str = "Cqrs-Idempotency-Key";
    /// The newest event the caller has seen, `<store>:<position>`
    /// ([`CommandMetadata::seen_position`](cqrs_core::CommandMetadata::seen_position)).
    pub const SEEN_POSITION: &str = "Cqrs-Seen-Position";
    /// Prefix of extra metadata headers.
    pub const EXTRA_PREFIX: &str = crate::headers::legacy::EXTRA_PREFIX;
}

/// The subject commands for aggregate type `aggregate_type` of `context` are sent to.
pub fn command_subject(context: &str, aggregate_type: &str) -> String {
    format!("{context}.commands.{aggregate_type}")
}

/// The answer to a command request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CommandReply {
    /// The command was applied (or had been: an idempotent retry).
    Committed(CommandReceipt),
    /// It was not.
    Failed {
        /// What kind of failure.
        kind: FailureKind,
        /// A readable explanation.
        message: String,
    },
}

/// What a committed command stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandReceipt {
    /// The aggregate.
    pub aggregate_id: String,
    /// The aggregate version after the command (`None` when it decided no events).
    pub version: Option<u64>,
    /// Store position of the last event (`None` when no events).
    pub position: Option<u64>,
    /// Ids of the stored events, in order.
    pub event_ids: Vec<Uuid>,
}

/// Why a command failed, as a client can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Another writer changed the aggregate: reload and decide whether to resend.
    Conflict,
    /// The aggregate refused the command (a business rule).
    Rejected,
    /// The command makes no sense in the aggregate's state.
    InvalidTransition,
    /// The request itself is malformed: fix the sender.
    BadRequest,
    /// The store is unavailable or the outcome is unknown: resend the same command later.
    Unavailable,
    /// Anything else on the service side.
    Internal,
}

impl FailureKind {
    /// The kind as the reply's `kind` field writes it (`conflict`, `bad_request`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Conflict => "conflict",
            Self::Rejected => "rejected",
            Self::InvalidTransition => "invalid_transition",
            Self::BadRequest => "bad_request",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

/// Why [`CommandClient::send`] did not get a committed receipt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandFailure {
    /// The service answered with a failure.
    #[error("command {kind:?}: {message}")]
    Failed {
        /// What kind of failure.
        kind: FailureKind,
        /// The service's explanation.
        message: String,
    },
    /// No command service listens on the subject.
    #[error("no command service is listening on `{subject}`; start one or check the context")]
    NoService {
        /// The request subject.
        subject: String,
    },
    /// No answer in time. The command may or may not have been applied: resend it with the same
    /// command id and it is applied at most once.
    #[error("no answer on `{subject}` within {timeout:?}; resend with the same command id")]
    TimedOut {
        /// The request subject.
        subject: String,
        /// How long the client waited.
        timeout: Duration,
    },
    /// The command could not be serialised.
    #[error("command could not be serialised as JSON")]
    Encode(#[source] serde_json::Error),
    /// The reply is not a [`CommandReply`].
    #[error("unreadable reply from the command service")]
    BadReply(#[source] serde_json::Error),
    /// The request could not be sent.
    #[error("command request on `{subject}` failed")]
    Transport {
        /// The request subject.
        subject: String,
        /// The client's error.
        #[source]
        source: async_nats::RequestError,
    },
}

impl CommandFailure {
    /// The failure kind, when the service answered.
    pub fn kind(&self) -> Option<FailureKind> {
        match self {
            Self::Failed { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// Sends commands to command services.
#[derive(Debug, Clone)]
pub struct CommandClient {
    client: async_nats::Client,
    context: String,
    timeout: Duration,
}

impl CommandClient {
    /// A client for the services of bounded context `context`, waiting 10 s for answers.
    pub fn new(client: async_nats::Client, context: impl Into<String>) -> Self {
        Self {
            client,
            context: context.into(),
            timeout: Duration::from_secs(10),
        }
    }

    /// Waits `timeout` for each answer.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends `command` for aggregate `aggregate_id` with `metadata`, and waits for the outcome.
    pub async fn send<A>(
        &self,
        aggregate_id: &str,
        command: &A::Command,
        metadata: &CommandMetadata,
    ) -> Result<CommandReceipt, CommandFailure>
    where
        A: Aggregate,
        A::Command: Serialize,
    {
        let subject = command_subject(&self.context, A::TYPE);
        let body = serde_json::to_vec(command).map_err(CommandFailure::Encode)?;
        let request = async_nats::Request::new()
            .headers(request_headers(aggregate_id, metadata))
            .payload(body.into())
            .timeout(Some(self.timeout));
        let span = tracing::debug_span!(
            "cqrs.command.send",
            aggregate_type = A::TYPE,
            aggregate_id,
            command_id = %metadata.command_id,
            correlation_id = %metadata.correlation_id,
        );
        let reply = tracing::Instrument::instrument(
            self.client.send_request(subject.clone(), request),
            span,
        )
        .await
        .map_err(|source| match source.kind() {
            async_nats::client::RequestErrorKind::NoResponders => CommandFailure::NoService {
                subject: subject.clone(),
            },
            async_nats::client::RequestErrorKind::TimedOut => CommandFailure::TimedOut {
                subject: subject.clone(),
                timeout: self.timeout,
            },
            _ => CommandFailure::Transport {
                subject: subject.clone(),
                source,
            },
        })?;
        match serde_json::from_slice(&reply.payload).map_err(CommandFailure::BadReply)? {
            CommandReply::Committed(receipt) => Ok(receipt),
            CommandReply::Failed { kind, message } => Err(CommandFailure::Failed { kind, message }),
        }
    }
}

impl CommandFailure {
    /// Whether the aggregate refused the command (a rejection, or no transition for it in its
    /// state): sending it again changes nothing.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self.kind(),
            Some(FailureKind::Rejected | FailureKind::InvalidTransition)
        )
    }

    /// Whether sending the same command again later (with the same command id) may succeed:
    /// a conflict the service's retries did not settle, an unavailable store, no service
    /// listening yet, no answer in time, or a request that could not be sent.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Failed { kind, .. } => {
                matches!(kind, FailureKind::Conflict | FailureKind::Unavailable)
            }
            Self::NoService { .. } | Self::TimedOut { .. } | Self::Transport { .. } => true,
            Self::Encode(_) | Self::BadReply(_) => false,
        }
    }
}

/// Over NATS: a process manager's command goes through the command service of its aggregate
/// type. A refusal counts as delivered; anything else is returned, so the runner retries the
/// event with the same command id — as a transient failure when
/// [`CommandFailure::is_retryable`] (no service, a timeout, a conflict the service's retries
/// did not settle, an unavailable store).
impl<A> CommandDispatcher<Targeted<A>> for CommandClient
where
    A: Aggregate,
    A::Command: Serialize,
{
    async fn dispatch(
        &self,
        target: Targeted<A>,
        metadata: CommandMetadata,
    ) -> Result<(), HandlerError> {
        let outcome = self
            .send::<A>(
                &target.aggregate_id,
                &target.command,
                &target.metadata(metadata),
            )
            .await;
        dispatched::<A, _, _>(
            &target.aggregate_id,
            outcome,
            CommandFailure::is_refusal,
            CommandFailure::is_retryable,
        )
    }
}

/// The headers that carry `metadata` for a command to `aggregate_id`.
pub fn request_headers(aggregate_id: &str, metadata: &CommandMetadata) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::AGGREGATE_ID, aggregate_id);
    headers.insert(header::COMMAND_ID, metadata.command_id.to_string());
    headers.insert(header::CORRELATION_ID, metadata.correlation_id.to_string());
    if let Some(causation) = metadata.causation_id {
        headers.insert(header::CAUSATION_ID, causation.to_string());
    }
    for (name, value) in [
        (header::TENANT, &metadata.tenant),
        (header::ACTOR, &metadata.actor),
        (header::TRACEPARENT, &metadata.trace),
        (header::IDEMPOTENCY_KEY, &metadata.idempotency_key),
    ] {
        if let Some(value) = value {
            headers.insert(name, value.as_str());
        }
    }
    if let Some(version) = metadata.expected_version {
        headers.insert(header::EXPECTED_VERSION, version.to_string());
    }
    if let Some(seen) = &metadata.seen_position {
        headers.insert(header::SEEN_POSITION, seen.to_string());
    }
    for (key, value) in &metadata.extra {
        headers.insert(
            format!("{}{key}", header::EXTRA_PREFIX).as_str(),
            value.as_str(),
        );
    }
    headers
}

/// A malformed command request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(String);

/// Reads a command request: aggregate id and metadata from the headers, the command from the body.
pub(crate) fn parse_request<C: DeserializeOwned>(
    headers: Option<&HeaderMap>,
    body: &[u8],
) -> Result<(String, C, CommandMetadata), BadRequest> {
    let empty = HeaderMap::new();
    let headers = headers.unwrap_or(&empty);
    let text = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
    let uuid = |name: &str| -> Result<Option<Uuid>, BadRequest> {
        text(name)
            .map(|v| {
                Uuid::parse_str(&v)
                    .map_err(|e| BadRequest(format!("header {name} is not a UUID ({v:?}): {e}")))
            })
            .transpose()
    };
    let aggregate_id = text(header::AGGREGATE_ID)
        .ok_or_else(|| BadRequest(format!("header {} is missing", header::AGGREGATE_ID)))?;
    let command = serde_json::from_slice(body)
        .map_err(|e| BadRequest(format!("the body is not a valid command: {e}")))?;
    let mut metadata = match uuid(header::COMMAND_ID)? {
        Some(id) => CommandMetadata::root_with_id(id),
        None => CommandMetadata::root(),
    };
    if let Some(correlation) = uuid(header::CORRELATION_ID)? {
        metadata.correlation_id = correlation;
    }
    metadata.causation_id = uuid(header::CAUSATION_ID)?;
    metadata.tenant = text(header::TENANT);
    metadata.actor = text(header::ACTOR);
    metadata.trace = text(header::TRACEPARENT);
    metadata.idempotency_key = text(header::IDEMPOTENCY_KEY);
    metadata.expected_version = text(header::EXPECTED_VERSION)
        .map(|v| {
            v.parse().map_err(|e| {
                BadRequest(format!(
                    "header {} is not a version number ({v:?}): {e}",
                    header::EXPECTED_VERSION
                ))
            })
        })
        .transpose()?;
    metadata.seen_position = text(header::SEEN_POSITION)
        .map(|v| {
            v.rsplit_once(':')
                .and_then(|(store, position)| {
                    Some(SeenPosition {
                        store: store.to_owned(),
                        position: position.parse().ok()?,
                    })
                })
                .filter(|seen| !seen.store.is_empty())
                .ok_or_else(|| {
                    BadRequest(format!(
                        "header {} is not `<store>:<position>` ({v:?})",
                        header::SEEN_POSITION
                    ))
                })
        })
        .transpose()?;
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        if let Some(key) = name.strip_prefix(header::EXTRA_PREFIX)
            && let Some(value) = values.first()
        {
            metadata
                .extra
                .insert(key.to_owned(), value.as_str().to_owned());
        }
    }
    Ok((aggregate_id, command, metadata))
}

pub use crate::service::{ServiceError as CommandServiceError, ServiceHandle};

/// Serves commands for aggregate `A` from NATS requests.
#[derive(Debug)]
pub struct CommandService<A: Aggregate, S> {
    repository: Repository<A, S>,
    client: async_nats::Client,
    context: String,
    concurrency: usize,
}

impl<A, S> CommandService<A, S>
where
    A: Aggregate,
    A::Command: DeserializeOwned,
    S: EventStore + Clone,
{
    /// A service for aggregate `A` of bounded context `context`, running commands through
    /// `repository`; handles up to 64 requests at once.
    pub fn new(
        client: async_nats::Client,
        context: impl Into<String>,
        repository: Repository<A, S>,
    ) -> Self {
        Self {
            repository,
            client,
            context: context.into(),
            concurrency: 64,
        }
    }

    /// Handles up to `concurrency` requests at once.
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Serves in the background as the endpoint `<AggregateType>` (subject
    /// `<context>.commands.<AggregateType>`, queue group `cqrs-<context>-<AggregateType>`) of
    /// the NATS micro service `cqrs-<context>`, so that `$SRV.PING`, `$SRV.INFO` and
    /// `$SRV.STATS` (and `nats micro ls`) see it. Returns once the subscription is confirmed by
    /// the server, so requests sent afterwards are served.
    ///
    /// Every command request counts as a request of the endpoint, answered in the command
    /// reply format whatever its outcome; the outcomes by kind (`committed`, `conflict`,
    /// `rejected`, ...) are the endpoint's stats `data`.
    pub async fn spawn(self) -> Result<ServiceHandle, CommandServiceError> {
        use async_nats::service::ServiceExt as _;
        for name in [self.context.as_str(), A::TYPE] {
            if !crate::service::is_token(name) {
                return Err(CommandServiceError::InvalidName(name.to_owned()));
            }
        }
        let subject = command_subject(&self.context, A::TYPE);
        let queue = crate::layout::command_queue(&self.context, A::TYPE);
        let outcomes = Outcomes::new(&self.context, A::TYPE);
        let stats = outcomes.clone();
        let service = self
            .client
            .service_builder()
            .description(format!(
                "cqrs command service of context {}: one endpoint per aggregate type",
                self.context
            ))
            .stats_handler(move |_endpoint, _stats| stats.data())
            .start(
                crate::layout::command_service(&self.context),
                env!("CARGO_PKG_VERSION"),
            )
            .await
            .map_err(|source| CommandServiceError::Register {
                what: format!("the command service of context {}", self.context),
                source,
            })?;
        let added = service
            .endpoint_builder()
            .name(A::TYPE)
            .queue_group(&queue)
            .add(&subject)
            .await;
        let endpoint = match added {
            Ok(endpoint) => endpoint,
            Err(source) => {
                // Not left half registered: without its endpoint the service answers nothing.
                let _ = service.stop().await;
                return Err(CommandServiceError::Register {
                    what: format!("the endpoint {} on {subject}", A::TYPE),
                    source,
                });
            }
        };
        let repository = Arc::new(self.repository);
        let deregister = Box::pin(async move {
            if let Err(error) = service.stop().await {
                tracing::warn!(%error, "could not stop the command service");
            }
        });
        crate::service::serve_from(
            self.client,
            subject,
            endpoint,
            self.concurrency,
            move |request| {
                let repository = Arc::clone(&repository);
                let outcomes = outcomes.clone();
                async move { serve_one(&repository, &outcomes, request).await }
            },
            Some(deregister),
        )
        .await
    }
}

/// The outcomes of a command endpoint by kind, for its stats and the metrics.
#[derive(Debug, Clone)]
struct Outcomes {
    counts: Arc<std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>>,
    context: String,
    aggregate_type: &'static str,
}

impl Outcomes {
    fn new(context: &str, aggregate_type: &'static str) -> Self {
        Self {
            counts: Arc::default(),
            context: context.to_owned(),
            aggregate_type,
        }
    }

    fn count(&self, reply: &CommandReply) {
        let kind = match reply {
            CommandReply::Committed(_) => "committed",
            CommandReply::Failed { kind, .. } => kind.as_str(),
        };
        ::metrics::counter!(
            cqrs_core::metrics::COMMAND_SERVICE_REQUESTS,
            "context" => self.context.clone(),
            "aggregate_type" => self.aggregate_type,
            "outcome" => kind,
        )
        .increment(1);
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *counts.entry(kind).or_default() += 1;
    }

    fn data(&self) -> serde_json::Value {
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        serde_json::json!({ "outcomes": *counts })
    }
}

async fn serve_one<A, S>(
    repository: &Arc<Repository<A, S>>,
    outcomes: &Outcomes,
    request: async_nats::service::Request,
) where
    A: Aggregate,
    A::Command: DeserializeOwned,
    S: EventStore + Clone,
{
    if request.message.reply.is_none() {
        tracing::warn!(subject = %request.message.subject, "command without a reply subject ignored; send commands as requests");
        return;
    }
    // Run the command in its own task so that a panicking handler becomes an error reply and
    // never takes the service down.
    let outcome = {
        let repository = Arc::clone(repository);
        let message = request.message.clone();
        tokio::spawn(async move { handle(&repository, &message).await }).await
    };
    let reply = outcome.unwrap_or_else(|panic| CommandReply::Failed {
        kind: FailureKind::Internal,
        message: format!("the command handler panicked: {panic}"),
    });
    outcomes.count(&reply);
    let body = match serde_json::to_vec(&reply) {
        Ok(body) => body,
        Err(error) => {
            tracing::error!(%error, "command reply does not serialise");
            return;
        }
    };
    // A failed command is a request answered, in the command reply format: never the
    // protocol's error reply, whose body is empty.
    if let Err(error) = request.respond(Ok(body.into())).await {
        tracing::warn!(%error, "could not send the command reply");
    }
}

async fn handle<A, S>(repository: &Repository<A, S>, request: &Message) -> CommandReply
where
    A: Aggregate,
    A::Command: DeserializeOwned,
    S: EventStore + Clone,
{
    let (aggregate_id, command, metadata) =
        match parse_request::<A::Command>(request.headers.as_ref(), &request.payload) {
            Ok(parsed) => parsed,
            Err(BadRequest(message)) => {
                tracing::debug!(%message, "bad command request");
                return CommandReply::Failed {
                    kind: FailureKind::BadRequest,
                    message,
                };
            }
        };
    match repository.execute(&aggregate_id, command, metadata).await {
        Ok(events) => CommandReply::Committed(CommandReceipt {
            version: events.last().map(|e| e.version),
            position: events.last().map(|e| e.position),
            event_ids: events.iter().map(|e| e.event_id).collect(),
            aggregate_id,
        }),
        Err(error) => {
            let kind = match &error {
                CommandError::Rejected(_) => FailureKind::Rejected,
                CommandError::InvalidTransition(_) => FailureKind::InvalidTransition,
                CommandError::Store(store) if store.is_conflict() => FailureKind::Conflict,
                CommandError::Store(store) if store.is_retryable() => FailureKind::Unavailable,
                CommandError::Store(cqrs_core::StoreError::InvalidInput { .. }) => {
                    FailureKind::BadRequest
                }
                _ => FailureKind::Internal,
            };
            CommandReply::Failed {
                kind,
                // The rejection's reason is the error's source: the whole chain, on one line.
                message: cqrs_core::error::report(&error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{CommandFailure, FailureKind, header, parse_request, request_headers};
    use cqrs_core::{CommandMetadata, SeenPosition};

    #[test]
    fn a_failure_says_what_failed_and_its_source_why_each_once() {
        let json = serde_json::from_str::<u8>("{").unwrap_err();
        let why = json.to_string();
        let failure = CommandFailure::BadReply(json);
        assert_eq!(
            failure.to_string(),
            "unreadable reply from the command service"
        );
        let line = cqrs_core::error::report(&failure);
        assert_eq!(
            line,
            format!("unreadable reply from the command service: {why}")
        );
        assert!(
            !failure.is_retryable(),
            "a reply that cannot be read stays so"
        );
        let timed_out = CommandFailure::TimedOut {
            subject: "sales.commands.Order".to_owned(),
            timeout: std::time::Duration::from_secs(1),
        };
        assert!(timed_out.is_retryable());
        let refused = CommandFailure::Failed {
            kind: FailureKind::Rejected,
            message: "no".to_owned(),
        };
        assert!(refused.is_refusal() && !refused.is_retryable());
    }

    #[test]
    fn metadata_survives_the_request_headers() {
        let metadata = CommandMetadata::root()
            .with_tenant("acme")
            .with_expected_version(3)
            .with_seen_position(SeenPosition {
                store: "EVENTS_SALES".to_owned(),
                position: 1234,
            })
            .with_extra("request", "r-1");
        let headers = request_headers("o-1", &metadata);
        let parsed = parse_request::<u32>(Some(&headers), b"7");
        assert_eq!(parsed, Ok(("o-1".to_owned(), 7, metadata)));
    }

    #[test]
    fn a_malformed_seen_position_is_a_bad_request() {
        for bad in ["1234", "EVENTS_SALES:", ":12", "EVENTS_SALES:x"] {
            let mut headers = request_headers("o-1", &CommandMetadata::root());
            headers.insert(header::SEEN_POSITION, bad);
            let error = parse_request::<u32>(Some(&headers), b"7").map(|_| ());
            assert!(
                matches!(&error, Err(e) if e.to_string().contains(header::SEEN_POSITION)),
                "{bad:?}: {error:?}"
            );
        }
    }

    #[test]
    fn a_failure_kind_counts_under_the_name_its_reply_writes() {
        for kind in [
            FailureKind::Conflict,
            FailureKind::Rejected,
            FailureKind::InvalidTransition,
            FailureKind::BadRequest,
            FailureKind::Unavailable,
            FailureKind::Internal,
        ] {
            assert_eq!(serde_json::to_value(kind).ok(), Some(kind.as_str().into()));
        }
    }
}
