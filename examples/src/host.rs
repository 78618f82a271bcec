//! Where an example's projections run: live runners, read-model stores and rebuilds, either in
//! process on the [`InMemoryEventStore`] or on JetStream (checkpointed ordered consumers, KV buckets).
//!
//! The examples that use projections (`task_tracker`, `graph_editor`) are written once against
//! [`ProjectionHost`], so the same walkthrough runs on both stores and tells the same story:
//!
//! | | [`InMemoryHost`] | [`JetStreamHost`] |
//! | --- | --- | --- |
//! | live projection | [`InMemoryProjectionRunner::spawn`] from the first event | [`JetStreamProjectionRunner::spawn`] from its checkpoints |
//! | rebuild | [`catch_up`] over the whole history, then live from the next position | [`JetStreamProjectionRunner::rebuild`]: the consumer is recreated from the first event |
//! | read model | [`InMemoryReadModelStore`] | [`KvReadModelStore`], one KV bucket per read model |

use cqrs_core::projection::{InMemoryProjectionRunner, ProjectionHandle, catch_up};
use cqrs_core::read_model::InMemoryReadModelStore;
use cqrs_core::{EventStore, InMemoryEventStore, Projection, ReadModelStore, RetryPolicy};
use cqrs_nats::{
    JetStreamEventStore, JetStreamProjectionHandle, JetStreamProjectionRunner, KvReadModelStore,
    ProjectionConfig, StoreConfig,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::time::Duration;

/// The error type of the examples' walkthroughs.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a walkthrough waits for a projection to catch up before it gives up.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// What a read model can hold on every host: cloneable, shareable and JSON-serialisable (for
/// KV buckets).
pub trait ReadModelValue: Clone + Send + Sync + Serialize + DeserializeOwned + 'static {}

impl<T: Clone + Send + Sync + Serialize + DeserializeOwned + 'static> ReadModelValue for T {}

/// An event store together with the means to run projections on it.
pub trait ProjectionHost: Send + Sync {
    /// The event store.
    type Store: EventStore + Clone;
    /// A read-model store of `V` values.
    type Model<V: ReadModelValue>: ReadModelStore<V> + Clone;
    /// A running projection.
    type Running<P: Projection>: RunningProjection;

    /// The event store, for repositories.
    fn store(&self) -> &Self::Store;

    /// The read-model store `name` (`[A-Za-z0-9_-]`, at most 64 characters; the KV bucket on
    /// JetStream).
    fn model<V: ReadModelValue>(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Self::Model<V>, BoxError>> + Send;

    /// Runs `projection` live: from its checkpoint, or from the first event when it has none.
    fn spawn<P: Projection>(
        &self,
        projection: P,
    ) -> impl Future<Output = Result<Self::Running<P>, BoxError>> + Send;

    /// Runs `projection` from the first event again, forgetting its checkpoint: the rebuild of
    /// a read model whose schema changed. Stop the projection's old runner first, and give the
    /// projection an empty read model.
    fn rebuild<P: Projection>(
        &self,
        projection: P,
    ) -> impl Future<Output = Result<Self::Running<P>, BoxError>> + Send;
}

/// Control of a projection started by a [`ProjectionHost`].
pub trait RunningProjection: Send + Sync {
    /// Read-your-writes: waits until the projection has processed store position `position`
    /// (at most [`CATCH_UP_TIMEOUT`]).
    fn wait_for(&self, position: u64) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Stops the projection.
    fn stop(self) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// Projections in process, on an [`InMemoryEventStore`].
#[derive(Debug, Clone, Default)]
pub struct InMemoryHost {
    store: InMemoryEventStore,
}

impl InMemoryHost {
    /// A host with an empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl ProjectionHost for InMemoryHost {
    type Store = InMemoryEventStore;
    type Model<V: ReadModelValue> = InMemoryReadModelStore<V>;
    type Running<P: Projection> = ProjectionHandle<P>;

    fn store(&self) -> &InMemoryEventStore {
        &self.store
    }

    async fn model<V: ReadModelValue>(
        &self,
        _name: &str,
    ) -> Result<InMemoryReadModelStore<V>, BoxError> {
        Ok(InMemoryReadModelStore::new())
    }

    async fn spawn<P: Projection>(&self, projection: P) -> Result<ProjectionHandle<P>, BoxError> {
        Ok(InMemoryProjectionRunner::spawn(
            &self.store,
            projection,
            0,
            RetryPolicy::default(),
        ))
    }

    async fn rebuild<P: Projection>(&self, projection: P) -> Result<ProjectionHandle<P>, BoxError> {
        // Replay the whole history into the new read model, then follow the store live from the
        // position after the last event replayed (redeliveries are absorbed by `apply_once`).
        let replayed = catch_up(&self.store, &projection, 0, &RetryPolicy::default()).await?;
        if let Some(parked) = replayed.parked.first() {
            return Err(format!(
                "rebuilding `{}` failed at position {}: {}",
                parked.projection, parked.event.position, parked.error
            )
            .into());
        }
        Ok(InMemoryProjectionRunner::spawn(
            &self.store,
            projection,
            replayed.checkpoint + 1,
            RetryPolicy::default(),
        ))
    }
}

impl<P: Projection> RunningProjection for ProjectionHandle<P> {
    async fn wait_for(&self, position: u64) -> Result<(), BoxError> {
        ProjectionHandle::wait_for(self, position, CATCH_UP_TIMEOUT).await?;
        Ok(())
    }

    async fn stop(self) -> Result<(), BoxError> {
        ProjectionHandle::stop(self).await;
        Ok(())
    }
}

/// Projections on JetStream: checkpoints per partition in a KV bucket, read models in KV buckets.
#[derive(Debug, Clone)]
pub struct JetStreamHost {
    store: JetStreamEventStore,
    config: ProjectionConfig,
}

impl JetStreamHost {
    /// Connects to the server at `url` and binds (or creates) the stream of bounded context
    /// `context`.
    pub async fn connect(url: &str, context: &str) -> Result<Self, BoxError> {
        let store = JetStreamEventStore::connect(url, StoreConfig::new(context)).await?;
        Ok(Self::new(store))
    }

    /// A host on `store`, with the default [`ProjectionConfig`].
    pub fn new(store: JetStreamEventStore) -> Self {
        Self {
            store,
            config: ProjectionConfig::new(),
        }
    }
}

impl ProjectionHost for JetStreamHost {
    type Store = JetStreamEventStore;
    type Model<V: ReadModelValue> = KvReadModelStore<V>;
    type Running<P: Projection> = JetStreamProjectionHandle<P>;

    fn store(&self) -> &JetStreamEventStore {
        &self.store
    }

    async fn model<V: ReadModelValue>(&self, name: &str) -> Result<KvReadModelStore<V>, BoxError> {
        Ok(KvReadModelStore::open(self.store.jetstream(), name, 1).await?)
    }

    async fn spawn<P: Projection>(
        &self,
        projection: P,
    ) -> Result<JetStreamProjectionHandle<P>, BoxError> {
        Ok(JetStreamProjectionRunner::spawn(&self.store, projection, self.config.clone()).await?)
    }

    async fn rebuild<P: Projection>(
        &self,
        projection: P,
    ) -> Result<JetStreamProjectionHandle<P>, BoxError> {
        Ok(
            JetStreamProjectionRunner::rebuild(&self.store, projection, self.config.clone())
                .await?,
        )
    }
}

impl<P: Projection> RunningProjection for JetStreamProjectionHandle<P> {
    async fn wait_for(&self, position: u64) -> Result<(), BoxError> {
        JetStreamProjectionHandle::wait_for(self, position, CATCH_UP_TIMEOUT).await?;
        Ok(())
    }

    async fn stop(self) -> Result<(), BoxError> {
        JetStreamProjectionHandle::stop(self).await?;
        Ok(())
    }
}
