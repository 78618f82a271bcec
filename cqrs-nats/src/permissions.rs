//! Permission violations, reported fast and typed.
//!
//! nats-server never answers a publish the user may not make: it drops the message and sends the
//! connection an asynchronous `-ERR 'Permissions Violation for Publish to "<subject>"'`
//! (`pubPermissionViolation` in the server's `client.go`), and a denied subscription gets
//! `-ERR 'Permissions Violation for Subscription to "<subject>"'` while the client believes it is
//! subscribed. async-nats 0.51 hands these to the connection's event callback only, as
//! [`Event::ServerError`]; the request that caused one just waits for its timeout.
//!
//! A [`PermissionWatch`] listens to those events. A store that has one (see
//! [`JetStreamEventStore::connect_with_options`](crate::JetStreamEventStore::connect_with_options)
//! and [`JetStreamEventStore::from_client_with_watch`](crate::JetStreamEventStore::from_client_with_watch))
//! registers the subjects of every request before sending it, and a violation naming one of them
//! fails the request at once with [`StoreError::PermissionDenied`] instead of a timeout. A denied
//! subscription to the connection's inbox fails every pending and later request until the client
//! reconnects (no reply can arrive). A store made with plain
//! [`from_client`](crate::JetStreamEventStore::from_client) has no watch: a denied request then
//! ends as it would without permissions, in a timeout ([`StoreError::Unavailable`], or
//! [`StoreError::OutcomeUnknown`] for an append).

use async_nats::{ConnectOptions, Event, ServerError};
use cqrs_core::{StoreError, StreamId};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::broadcast;

/// What the server refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Denied {
    /// A publish (or request) to the subject.
    Publish,
    /// A subscription to the subject.
    Subscribe,
}

/// One permission violation the server reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// What was refused.
    pub denied: Denied,
    /// The subject, as the server named it.
    pub subject: String,
    /// The server's message.
    pub message: String,
}

impl Violation {
    /// Parses a server error text such as `Permissions Violation for Publish to "a.b"` (the
    /// quotes come from Go's `%q`); `None` for any other error.
    pub fn parse(message: &str) -> Option<Self> {
        let message = message.trim().trim_matches('\'');
        let rest = message.strip_prefix("Permissions Violation for ")?;
        let (denied, rest) = if let Some(rest) = rest.strip_prefix("Publish to ") {
            (Denied::Publish, rest)
        } else if let Some(rest) = rest.strip_prefix("Subscription to ") {
            (Denied::Subscribe, rest)
        } else {
            return None;
        };
        let subject = rest.strip_prefix('"')?.split('"').next()?;
        Some(Self {
            denied,
            subject: subject.to_owned(),
            message: message.to_owned(),
        })
    }

    /// The violation in an [`Event`] of async-nats, if it is one.
    pub fn from_event(event: &Event) -> Option<Self> {
        match event {
            Event::ServerError(ServerError::Other(message)) => Self::parse(message),
            _ => None,
        }
    }

    /// The store error for `operation` on `stream`: what was refused, and what to check.
    pub fn store_error(&self, operation: &'static str, stream: StreamId) -> StoreError {
        StoreError::PermissionDenied {
            operation,
            stream,
            reason: self.to_string(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.denied {
            Denied::Publish => "publish to",
            Denied::Subscribe => "subscribe to",
        };
        write!(
            f,
            "nats-server refused to let this connection {what} `{}` ({}); check the publish/subscribe permissions of the NATS user the store connects as (the README's \"Tenant isolation\" lists the subjects each operation needs)",
            self.subject, self.message
        )
    }
}

/// Violations seen more than this many times before a waiter looked are skipped by it (it then
/// waits for the next one or its own timeout).
const CAPACITY: usize = 64;

/// Records the permission violations a connection's server reports and fails the store's
/// pending requests on their subjects at once. Cloning shares it.
///
/// [`JetStreamEventStore::connect_with_options`](crate::JetStreamEventStore::connect_with_options)
/// makes one itself. To keep an event callback of your own, make one, call
/// [`observe`](Self::observe) from your callback, and pass it to
/// [`JetStreamEventStore::from_client_with_watch`](crate::JetStreamEventStore::from_client_with_watch).
#[derive(Clone)]
pub struct PermissionWatch {
    inner: Arc<WatchInner>,
}

struct WatchInner {
    violations: broadcast::Sender<Violation>,
    /// A refused subscription stays refused until the client reconnects (and resubscribes).
    refused_subscription: Mutex<Option<Violation>>,
}

impl fmt::Debug for PermissionWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PermissionWatch")
            .field("refused_subscription", &*self.refused())
            .finish_non_exhaustive()
    }
}

impl Default for PermissionWatch {
    fn default() -> Self {
        Self::new()
    }
}

impl PermissionWatch {
    /// A watch that has seen nothing yet.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(WatchInner {
                violations: broadcast::channel(CAPACITY).0,
                refused_subscription: Mutex::new(None),
            }),
        }
    }

    fn refused(&self) -> std::sync::MutexGuard<'_, Option<Violation>> {
        // Holds a plain value; a panic elsewhere cannot leave it inconsistent.
        self.inner
            .refused_subscription
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes note of a connection event: permission violations fail the pending requests on
    /// their subject; a reconnect forgets refused subscriptions (they are made again).
    pub fn observe(&self, event: &Event) {
        if matches!(event, Event::Connected) {
            self.refused().take();
            return;
        }
        let Some(violation) = Violation::from_event(event) else {
            return;
        };
        tracing::warn!(subject = %violation.subject, message = %violation.message, "nats permission violation");
        if violation.denied == Denied::Subscribe {
            *self.refused() = Some(violation.clone());
        }
        // Nobody waiting is fine.
        let _ = self.inner.violations.send(violation);
    }

    /// `options` with an event callback that feeds this watch. It replaces an event callback
    /// set on `options` before; async-nats logs every event at `info` level either way.
    pub fn install(&self, options: ConnectOptions) -> ConnectOptions {
        let watch = self.clone();
        options.event_callback(move |event| {
            watch.observe(&event);
            async {}
        })
    }

    /// Runs `request`, whose messages go to (or subscriptions are made on) `subjects`, unless the
    /// server refuses one of them, or the connection's reply subscription `inbox_prefix.…`,
    /// first: then the violation is the answer, as soon as the server reports it. For requests
    /// of your own on a connection whose events feed this watch.
    pub async fn guard<T>(
        &self,
        inbox_prefix: &str,
        subjects: &[&str],
        request: impl Future<Output = T>,
    ) -> Result<T, Violation> {
        // Subscribed before the request is sent: its violation cannot be missed.
        let mut violations = self.inner.violations.subscribe();
        if let Some(refused) = self.refused().clone()
            && in_inbox(&refused.subject, inbox_prefix)
        {
            return Err(refused);
        }
        let denied = async {
            loop {
                match violations.recv().await {
                    Ok(v) if concerns(&v, inbox_prefix, subjects) => return v,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    // The watch lives as long as `self`; never reached, but wait rather than fail.
                    Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
                }
            }
        };
        tokio::select! {
            biased;
            done = request => Ok(done),
            violation = denied => Err(violation),
        }
    }
}

fn concerns(violation: &Violation, inbox_prefix: &str, subjects: &[&str]) -> bool {
    match violation.denied {
        Denied::Publish => subjects.contains(&violation.subject.as_str()),
        // No reply can reach a refused inbox subscription.
        Denied::Subscribe => {
            in_inbox(&violation.subject, inbox_prefix)
                || subjects.contains(&violation.subject.as_str())
        }
    }
}

/// Whether `subject` is `inbox_prefix` or below it.
fn in_inbox(subject: &str, inbox_prefix: &str) -> bool {
    subject
        .strip_prefix(inbox_prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// A store's optional watch, with the connection's inbox prefix.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    pub(crate) watch: Option<PermissionWatch>,
    pub(crate) inbox_prefix: String,
}

impl Guard {
    pub(crate) fn new(watch: Option<PermissionWatch>, client: &async_nats::Client) -> Self {
        // `new_inbox` is `<prefix>.<nuid>`.
        let inbox = client.new_inbox();
        let inbox_prefix = inbox
            .rsplit_once('.')
            .map_or(inbox.as_str(), |(prefix, _)| prefix)
            .to_owned();
        Self {
            watch,
            inbox_prefix,
        }
    }

    /// Runs `request` (see [`PermissionWatch::guard`]); without a watch, just runs it.
    pub(crate) async fn run<T>(
        &self,
        subjects: &[&str],
        request: impl Future<Output = T>,
    ) -> Result<T, Violation> {
        match &self.watch {
            Some(watch) => watch.guard(&self.inbox_prefix, subjects, request).await,
            None => Ok(request.await),
        }
    }
}

/// The JetStream API subjects the store uses, for matching violations (default API prefix).
pub(crate) mod api {
    /// Stream info: provisioning and `read_all`.
    pub(crate) fn stream_info(stream: &str) -> String {
        format!("$JS.API.STREAM.INFO.{stream}")
    }

    /// Stream create.
    pub(crate) fn stream_create(stream: &str) -> String {
        format!("$JS.API.STREAM.CREATE.{stream}")
    }

    /// Stream update.
    pub(crate) fn stream_update(stream: &str) -> String {
        format!("$JS.API.STREAM.UPDATE.{stream}")
    }

    /// Leader reads by sequence or last-by-subject (JSON body: not scoped to a subject).
    pub(crate) fn msg_get(stream: &str) -> String {
        format!("$JS.API.STREAM.MSG.GET.{stream}")
    }

    /// Batched direct get (JSON body: not scoped to a subject).
    pub(crate) fn direct_get(stream: &str) -> String {
        format!("$JS.API.DIRECT.GET.{stream}")
    }

    /// Direct get of the last message on `subject` (the subject is part of the API subject).
    pub(crate) fn direct_get_last(stream: &str, subject: &str) -> String {
        format!("$JS.API.DIRECT.GET.{stream}.{subject}")
    }

    /// Create of consumer `name` filtered to `filter` (the filter is part of the API subject).
    pub(crate) fn consumer_create(stream: &str, name: &str, filter: &str) -> String {
        format!("$JS.API.CONSUMER.CREATE.{stream}.{name}.{filter}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_servers_violation_texts() {
        let v = Violation::parse(r#"Permissions Violation for Publish to "bank.events.t2.A.x""#)
            .unwrap();
        assert_eq!(v.denied, Denied::Publish);
        assert_eq!(v.subject, "bank.events.t2.A.x");
        let v = Violation::parse(
            r#"Permissions Violation for Subscription to "_INBOX.abc.*" using queue "q""#,
        )
        .unwrap();
        assert_eq!(v.denied, Denied::Subscribe);
        assert_eq!(v.subject, "_INBOX.abc.*");
        assert!(Violation::parse("Authorization Violation").is_none());
        assert!(
            Violation::parse(r#"Permissions Violation for Publish with Reply of "x""#).is_none()
        );
        let event = Event::ServerError(ServerError::Other(
            r#"Permissions Violation for Publish to "a.b""#.to_owned(),
        ));
        assert_eq!(Violation::from_event(&event).unwrap().subject, "a.b");
        assert!(
            v.to_string()
                .contains("check the publish/subscribe permissions")
        );
    }

    #[tokio::test]
    async fn a_violation_fails_only_requests_on_its_subject() {
        let watch = PermissionWatch::new();
        let event = |subject: &str| {
            Event::ServerError(ServerError::Other(format!(
                "Permissions Violation for Publish to \"{subject}\""
            )))
        };
        let pending = {
            let watch = watch.clone();
            tokio::spawn(async move {
                watch
                    .guard("_INBOX", &["a.b"], std::future::pending::<()>())
                    .await
            })
        };
        let other = {
            let watch = watch.clone();
            tokio::spawn(async move {
                watch
                    .guard(
                        "_INBOX",
                        &["c.d"],
                        tokio::time::sleep(std::time::Duration::from_millis(200)),
                    )
                    .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        watch.observe(&event("a.b"));
        assert_eq!(pending.await.unwrap().unwrap_err().subject, "a.b");
        assert!(other.await.unwrap().is_ok());
        // A refused inbox subscription fails later requests at once, until a reconnect.
        watch.observe(&Event::ServerError(ServerError::Other(
            "Permissions Violation for Subscription to \"_INBOX.x.*\"".to_owned(),
        )));
        let refused = watch
            .guard("_INBOX", &["e.f"], std::future::pending::<()>())
            .await;
        assert_eq!(refused.unwrap_err().denied, Denied::Subscribe);
        watch.observe(&Event::Connected);
        let fine = watch.guard("_INBOX", &["e.f"], async { 1 }).await;
        assert_eq!(fine.unwrap(), 1);
    }
}
