//! Deadlines held by the server: process managers' [`Timed`](cqrs_core::deadline::Timed)
//! commands scheduled with JetStream message scheduling (ADR-51, nats-server 2.12+), so that no
//! timer lives in a worker's memory and none is lost when a worker dies.
//!
//! Each context gets a stream `DEADLINES_<CONTEXT>` on `<context>.deadlines.>` (schedules
//! allowed, roll-ups and per-message TTLs for cancellations). A deadline is one message on
//! `<context>.deadlines.at.<flow>.<name>` — `<flow>` the correlation id, `<name>` the encoded
//! deadline name — with `Nats-Schedule: @at <RFC 3339>` and `Nats-Schedule-Target:
//! <context>.deadlines.due.<flow>.<name>`; its body is `{"command": .., "metadata": ..}` (JSON).
//! Scheduling the name again replaces it (the server rolls the subject up); cancelling it
//! publishes a roll-up on the subject that expires a second later. When the time comes the
//! server publishes the body to the `due` subject, where [`JetStreamDeadlines::spawn_worker`]
//! reads it with a durable consumer, sends the command through a dispatcher, acknowledges it
//! and deletes it. A worker that dies before acknowledging leaves the message to the next one;
//! the command's id is the one the reaction that scheduled it derived, so a deadline handled
//! twice is applied once.

use crate::store::{JetStreamEventStore, unavailable};
use crate::subject::encode_token;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use cqrs_core::deadline::{Deadline, DeadlineKey, Deadlines};
use cqrs_core::{CommandDispatcher, CommandMetadata, HandlerError, StoreError};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The name of the durable consumer the workers of a context share.
const WORKERS: &str = crate::layout::DEADLINE_WORKERS;
/// How long a worker has to send a due deadline before another may.
const ACK_WAIT: Duration = Duration::from_secs(10);

/// What a deadline message carries.
#[derive(Serialize, Deserialize)]
struct Body<C> {
    command: C,
    metadata: CommandMetadata,
}

/// A context's deadlines on JetStream, for commands of type `C` (serialised as JSON). Clones
/// share the connection.
#[derive(Debug)]
pub struct JetStreamDeadlines<C> {
    js: jetstream::Context,
    context: String,
    stream: String,
    command: PhantomData<fn(C) -> C>,
}

impl<C> Clone for JetStreamDeadlines<C> {
    fn clone(&self) -> Self {
        Self {
            js: self.js.clone(),
            context: self.context.clone(),
            stream: self.stream.clone(),
            command: PhantomData,
        }
    }
}

impl<C> JetStreamDeadlines<C> {
    /// The deadlines of `store`'s context: creates the stream `DEADLINES_<CONTEXT>` if it is
    /// missing (with the replicas of the context's stream).
    pub async fn open(store: &JetStreamEventStore) -> Result<Self, StoreError> {
        let context = store.subjects().context().to_owned();
        let stream = crate::layout::deadlines_stream(&context);
        let config = stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{context}.deadlines.>")],
            storage: stream::StorageType::File,
            num_replicas: store.replicas(),
            allow_message_schedules: true,
            allow_rollup: true,
            allow_message_ttl: true,
            allow_direct: true,
            ..Default::default()
        };
        store
            .jetstream()
            .get_or_create_stream(config)
            .await
            .map_err(|e| unavailable("open deadlines", e))?;
        Ok(Self {
            js: store.jetstream().clone(),
            context,
            stream,
            command: PhantomData,
        })
    }

    /// `<context>.deadlines.<kind>.<flow>.<name>`.
    fn subject(&self, kind: &str, key: &DeadlineKey) -> String {
        format!(
            "{}.deadlines.{kind}.{}.{}",
            self.context,
            key.correlation_id.simple(),
            encode_token(&key.name)
        )
    }

    /// Publishes and waits for the stream's acknowledgement.
    async fn publish(
        &self,
        operation: &'static str,
        subject: String,
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<(), HandlerError> {
        self.js
            .publish_with_headers(subject, headers, body.into())
            .await
            .map_err(|e| HandlerError::from(unavailable(operation, e)))?
            .await
            .map_err(|e| HandlerError::from(unavailable(operation, e)))?;
        Ok(())
    }
}

impl<C> Deadlines<C> for JetStreamDeadlines<C>
where
    C: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn schedule(&self, deadline: Deadline<C>) -> Result<(), HandlerError> {
        let at = deadline
            .at
            .to_offset(time::UtcOffset::UTC)
            .format(&Rfc3339)
            .map_err(HandlerError::from_error)?;
        let body = serde_json::to_vec(&Body {
            command: deadline.command,
            metadata: deadline.metadata,
        })
        .map_err(HandlerError::from_error)?;
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Schedule", format!("@at {at}").as_str());
        headers.insert(
            "Nats-Schedule-Target",
            self.subject("due", &deadline.key).as_str(),
        );
        self.publish(
            "schedule a deadline",
            self.subject("at", &deadline.key),
            headers,
            body,
        )
        .await
    }

    async fn cancel(&self, key: &DeadlineKey) -> Result<(), HandlerError> {
        // A roll-up removes the schedule; the roll-up message itself expires a second later.
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Rollup", "sub");
        headers.insert("Nats-TTL", "1s");
        self.publish(
            "cancel a deadline",
            self.subject("at", key),
            headers,
            Vec::new(),
        )
        .await
    }
}

/// A running deadline worker; [`stop`](Self::stop) ends it.
#[derive(Debug)]
pub struct DeadlineWorker {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl DeadlineWorker {
    /// Stops the worker once the deadline at hand is handled.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for DeadlineWorker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<C> JetStreamDeadlines<C>
where
    C: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Sends due deadlines through `dispatcher` until stopped. Every worker of the context
    /// shares one durable consumer: each due deadline goes to one of them, and to another if
    /// that one does not acknowledge it within 10 s (it died, or its dispatch failed).
    pub async fn spawn_worker<D: CommandDispatcher<C>>(
        &self,
        dispatcher: D,
    ) -> Result<DeadlineWorker, StoreError> {
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| unavailable("start a deadline worker", e))?;
        let consumer = stream
            .get_or_create_consumer(
                WORKERS,
                pull::Config {
                    durable_name: Some(WORKERS.to_owned()),
                    filter_subject: format!("{}.deadlines.due.>", self.context),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| unavailable("start a deadline worker", e))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| unavailable("start a deadline worker", e))?;
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = &mut stopped => break,
                    message = messages.next() => message,
                };
                let Some(message) = message else { break };
                let message = match message {
                    Ok(message) => message,
                    Err(error) => {
                        tracing::warn!(%error, "reading due deadlines failed; going on");
                        // Not in a tight loop while the server is away.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let sequence = message.info().map(|i| i.stream_sequence).ok();
                let ack = match serde_json::from_slice::<Body<C>>(&message.payload) {
                    Ok(body) => match dispatcher.dispatch(body.command, body.metadata).await {
                        Ok(()) => AckKind::Ack,
                        Err(error) => {
                            tracing::warn!(subject = %message.subject, %error, "a due deadline could not be sent; it is tried again");
                            AckKind::Nak(Some(Duration::from_secs(1)))
                        }
                    },
                    Err(error) => {
                        tracing::error!(subject = %message.subject, %error, "a due deadline cannot be read; it is dropped");
                        AckKind::Term
                    }
                };
                let done = !matches!(ack, AckKind::Nak(_));
                if let Err(error) = message.double_ack_with(ack).await {
                    tracing::warn!(subject = %message.subject, %error, "acknowledging a due deadline failed; it may be sent again");
                } else if done && let Some(sequence) = sequence {
                    // Sent: the message has done its work.
                    let _ = stream.delete_message(sequence).await;
                }
            }
        });
        Ok(DeadlineWorker {
            stop: Some(stop),
            task,
        })
    }
}
