//! Opening a KV bucket that several processes may be creating at the same time, or only one
//! that exists.

use async_nats::jetstream::context::{
    CreateKeyValueError, GetStreamError, KeyValueError, KeyValueErrorKind,
};
use async_nats::jetstream::{self, kv};

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

/// The bucket `bucket` if it exists, `None` if it does not; never creates anything.
pub(crate) async fn open_existing(
    js: &jetstream::Context,
    bucket: &str,
) -> Result<Option<kv::Store>, KeyValueError> {
    match Box::pin(js.get_key_value(bucket)).await {
        Ok(store) => Ok(Some(store)),
        Err(error) if error.kind() == KeyValueErrorKind::GetBucket && bucket_missing(&error) => {
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// Whether getting a bucket failed because its stream does not exist.
fn bucket_missing(error: &KeyValueError) -> bool {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<GetStreamError>())
        .is_some_and(crate::error::is_stream_not_found)
}
