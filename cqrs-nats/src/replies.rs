//! One wildcard inbox subscription shared by every multi-reply request of a store (batched
//! direct gets), instead of a subscription per request.

use async_nats::{Client, Message};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::{mpsc, oneshot};

type Routes = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>>;

fn lock(routes: &Routes) -> MutexGuard<'_, HashMap<u64, mpsc::UnboundedSender<Message>>> {
    // The map is only inserted into and removed from; a panic cannot leave it inconsistent.
    routes.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Routes replies arriving on `<prefix>.<id>` to the request that registered `id`.
#[derive(Debug)]
pub(crate) struct Replies {
    prefix: String,
    next: AtomicU64,
    routes: Routes,
    /// Dropping it stops the dispatcher, which drops (unsubscribes) the subscription.
    _stop: oneshot::Sender<()>,
}

/// A registered request: its reply subject and the replies; unregisters on drop.
pub(crate) struct Pending {
    pub(crate) reply_to: String,
    pub(crate) replies: mpsc::UnboundedReceiver<Message>,
    id: u64,
    routes: Routes,
}

impl Drop for Pending {
    fn drop(&mut self) {
        lock(&self.routes).remove(&self.id);
    }
}

impl Replies {
    /// Subscribes to a fresh wildcard inbox and starts the dispatcher.
    pub(crate) async fn start(client: &Client) -> Result<Self, async_nats::SubscribeError> {
        let prefix = client.new_inbox();
        let mut subscription = client.subscribe(format!("{prefix}.*")).await?;
        let routes: Routes = Arc::default();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let dispatch = Arc::clone(&routes);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    message = subscription.next() => {
                        let Some(message) = message else { break };
                        let id = message
                            .subject
                            .rsplit('.')
                            .next()
                            .and_then(|token| token.parse::<u64>().ok());
                        if let Some(id) = id
                            && let Some(route) = lock(&dispatch).get(&id)
                        {
                            // The request may have given up already; then the reply is dropped.
                            let _ = route.send(message);
                        }
                    }
                }
            }
        });
        Ok(Self {
            prefix,
            next: AtomicU64::new(1),
            routes,
            _stop: stop,
        })
    }

    /// Registers a new request.
    pub(crate) fn register(&self) -> Pending {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (sender, replies) = mpsc::unbounded_channel();
        lock(&self.routes).insert(id, sender);
        Pending {
            reply_to: format!("{}.{id}", self.prefix),
            replies,
            id,
            routes: Arc::clone(&self.routes),
        }
    }
}
