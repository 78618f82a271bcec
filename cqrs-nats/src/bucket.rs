//! Opening a KV bucket that several processes may be creating at the same time.

use async_nats::jetstream::{self, context::CreateKeyValueError, kv};

/// The bucket `config.bucket`: the existing one, else a new one with `config`. When the create
/// fails because another process created the bucket in between, that bucket is used; otherwise
/// the create error is returned. An existing bucket is used as it is, never reconfigured.
pub(crate) async fn open_or_create(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, CreateKeyValueError> {
    // async-nats' futures here are large: boxed, so that callers' futures stay small.
    if let Ok(store) = Box::pin(js.get_key_value(&config.bucket)).await {
        return Ok(store);
    }
    let bucket = config.bucket.clone();
    match Box::pin(js.create_key_value(config)).await {
        Ok(store) => Ok(store),
        Err(create_error) => js.get_key_value(&bucket).await.map_err(|_| create_error),
    }
}
