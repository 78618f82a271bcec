//! The request/reply services of the framework — the command service and the tenant read
//! service — share one way to run: a queue subscription (so instances scale out), a bound on
//! requests handled at once, and a graceful stop that leaves the queue group before it answers
//! what it already received.

use async_nats::{Client, Message};
use futures::StreamExt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Why a service over NATS (the command service, the tenant read service) could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The aggregate type or context cannot be a subject token.
    #[error(
        "`{0}` cannot be a subject token: use letters, digits, `-` and `_` for contexts and aggregate types"
    )]
    InvalidName(String),
    /// Subscribing failed.
    #[error("could not subscribe to `{subject}`")]
    Subscribe {
        /// The subject.
        subject: String,
        /// The client's error.
        #[source]
        source: async_nats::SubscribeError,
    },
    /// The service was given what it cannot work with; the text says what and what to do.
    #[error("{0}")]
    Misconfigured(String),
    /// Registering on the NATS service protocol failed: the service's `$SRV` subscriptions or
    /// its endpoint. Check the connection and the permissions for `$SRV.>` and the subject.
    #[error("could not register {what} on the NATS service protocol")]
    Register {
        /// The service or endpoint.
        what: String,
        /// The client's error.
        #[source]
        source: cqrs_core::error::BoxError,
    },
    /// The server did not confirm the subscription in time.
    #[error(
        "the server did not confirm the service's subscription within 10 s; check the connection"
    )]
    NotConfirmed,
}

/// A running service; dropping it does not stop it, [`stop`](Self::stop) does.
#[derive(Debug)]
pub struct ServiceHandle {
    task: JoinHandle<()>,
    shutdown: tokio::sync::watch::Sender<bool>,
    client: Client,
    subject: String,
}

impl ServiceHandle {
    /// The subject served.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Stops serving, gracefully: leaves the queue group (confirmed by the server, so no new
    /// request is routed here), answers the requests already received, then returns.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _finished = self.task.await;
        if confirm_with_server(&self.client).await.is_err() {
            tracing::warn!(subject = %self.subject, "could not confirm leaving the queue group");
        }
    }
}

/// Whether `name` can be a subject token of a context or aggregate type.
pub(crate) fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Where a service's requests come from, and how it stops taking new ones while still
/// reading those already received.
pub(crate) trait Requests: futures::Stream + Unpin + Send + 'static {
    /// Leaves the queue group (unsubscribes); the stream then ends after what it holds.
    fn leave(&mut self) -> impl Future<Output = Result<(), String>> + Send;
}

impl Requests for async_nats::Subscriber {
    async fn leave(&mut self) -> Result<(), String> {
        self.drain().await.map_err(|e| e.to_string())
    }
}

impl Requests for async_nats::service::endpoint::Endpoint {
    async fn leave(&mut self) -> Result<(), String> {
        self.stop().await.map_err(|e| e.to_string())
    }
}

/// Subscribes to `subject` in queue group `queue` and hands every request to `handle` in a task
/// of its own, at most `concurrency` at once. Returns once the server confirmed the
/// subscription, so requests sent afterwards are served.
pub(crate) async fn serve<H, F>(
    client: Client,
    subject: String,
    queue: String,
    concurrency: usize,
    handle: H,
) -> Result<ServiceHandle, ServiceError>
where
    H: Fn(Message) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let requests = client
        .queue_subscribe(subject.clone(), queue)
        .await
        .map_err(|source| ServiceError::Subscribe {
            subject: subject.clone(),
            source,
        })?;
    serve_from(client, subject, requests, concurrency, handle, None).await
}

/// [`serve`] from any source of requests (a queue subscription, an endpoint of the NATS service
/// protocol); `after` runs once the last request is answered (deregistering a service).
pub(crate) async fn serve_from<R, H, F>(
    client: Client,
    subject: String,
    mut requests: R,
    concurrency: usize,
    handle: H,
    after: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
) -> Result<ServiceHandle, ServiceError>
where
    R: Requests,
    R::Item: Send + 'static,
    H: Fn(R::Item) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let concurrency = concurrency.max(1);
    confirm_with_server(&client).await?;
    let all = u32::try_from(concurrency).unwrap_or(u32::MAX);
    let limit = Arc::new(Semaphore::new(concurrency));
    let (shutdown, mut stopping) = tokio::sync::watch::channel(false);
    let task = {
        let subject = subject.clone();
        tokio::spawn(async move {
            let mut draining = false;
            loop {
                let request = tokio::select! {
                    request = requests.next() => request,
                    _ = stopping.changed(), if !draining => {
                        draining = true;
                        // Unsubscribe, but still read what the server already sent us.
                        if let Err(error) = requests.leave().await {
                            tracing::warn!(%error, %subject, "could not leave the queue group");
                            break;
                        }
                        continue;
                    }
                };
                let Some(request) = request else { break };
                let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
                    break;
                };
                let served = handle(request);
                tokio::spawn(async move {
                    served.await;
                    drop(permit);
                });
            }
            // Wait for the requests in flight.
            let _all = limit.acquire_many(all).await;
            if let Some(after) = after {
                after.await;
            }
        })
    };
    Ok(ServiceHandle {
        task,
        shutdown,
        client,
        subject,
    })
}

/// Returns once the server has processed everything this connection sent before: a message
/// to our own fresh inbox comes back only after the server handled the earlier subscriptions
/// (it processes a connection's protocol in order). `flush` alone only empties the socket buffer.
async fn confirm_with_server(client: &Client) -> Result<(), ServiceError> {
    let inbox = client.new_inbox();
    let mut echo =
        client
            .subscribe(inbox.clone())
            .await
            .map_err(|source| ServiceError::Subscribe {
                subject: inbox.clone(),
                source,
            })?;
    let confirmed = async {
        client
            .publish(inbox.clone(), Vec::new().into())
            .await
            .ok()?;
        client.flush().await.ok()?;
        echo.next().await
    };
    match tokio::time::timeout(Duration::from_secs(10), confirmed).await {
        Ok(Some(_)) => Ok(()),
        _ => Err(ServiceError::NotConfirmed),
    }
}
