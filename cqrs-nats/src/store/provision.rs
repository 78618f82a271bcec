//! Connecting: the server version check, then the context's stream and snapshot bucket created
//! or verified (never reconfigured).

use super::config::MIN_SERVER_VERSION_TEXT;
use super::config::{config_differences, with_additions};
use super::heads::KnownHeads;
use super::snapshots::{self, SnapshotBucket};
use super::{Inner, JetStreamEventStore, MIN_SERVER_VERSION, StoreConfig};
use crate::error::ConnectError;
use crate::permissions::{Guard, PermissionWatch, api};
use crate::subject::Subjects;
use async_nats::jetstream::{self, stream};
use async_nats::{Client, ConnectOptions, ToServerAddrs};
use std::sync::{Arc, Mutex};

/// Parses `major.minor.patch` from a server version such as `2.12.8` or `2.14.0-RC.1`.
pub(crate) fn parse_server_version(version: &str) -> Option<(u64, u64, u64)> {
    let core = version.trim().trim_start_matches('v');
    let core = core.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(str::parse::<u64>);
    let major = parts.next()?.ok()?;
    let minor = parts.next()?.ok()?;
    let patch = parts.next().unwrap_or(Ok(0)).ok()?;
    Some((major, minor, patch))
}

fn provision_error(
    what: impl Into<String>,
    source: impl Into<cqrs_core::error::BoxError>,
) -> ConnectError {
    ConnectError::Provision {
        what: what.into(),
        source: source.into(),
    }
}

impl JetStreamEventStore {
    /// Connects to `servers` with default options and provisions the context.
    pub async fn connect(
        servers: impl ToServerAddrs,
        config: StoreConfig,
    ) -> Result<Self, ConnectError> {
        Self::connect_with_options(servers, ConnectOptions::new(), config).await
    }

    /// Connects with the given options (credentials, TLS, name, ...) and provisions the context.
    ///
    /// The store installs an event callback on `options` (replacing one set before) that
    /// records the server's permission violations, so that a denied request fails at once with
    /// [`StoreError::PermissionDenied`](cqrs_core::StoreError::PermissionDenied) instead of timing out (see [`crate::permissions`]). To
    /// keep a callback of your own, feed a [`PermissionWatch`] from it and use
    /// [`from_client_with_watch`](Self::from_client_with_watch).
    pub async fn connect_with_options(
        servers: impl ToServerAddrs,
        options: ConnectOptions,
        config: StoreConfig,
    ) -> Result<Self, ConnectError> {
        let watch = PermissionWatch::new();
        let client = watch
            .install(options)
            .connect(servers)
            .await
            .map_err(ConnectError::from_connect)?;
        Self::from_client_with_watch(client, config, watch).await
    }

    /// Uses an existing connection: checks the server version, then creates the context's stream
    /// and snapshot bucket, or verifies them if they exist (a conflicting stream configuration is
    /// an error, never changed silently). With
    /// [`StoreConfig::create_missing`]`(false)` nothing is created.
    ///
    /// The store cannot see the connection's events here: a request the server's permissions
    /// refuse ends in a timeout ([`StoreError::Unavailable`](cqrs_core::StoreError::Unavailable), [`StoreError::OutcomeUnknown`](cqrs_core::StoreError::OutcomeUnknown) for
    /// an append), not in [`StoreError::PermissionDenied`](cqrs_core::StoreError::PermissionDenied). Prefer
    /// [`from_client_with_watch`](Self::from_client_with_watch).
    pub async fn from_client(client: Client, config: StoreConfig) -> Result<Self, ConnectError> {
        Box::pin(Self::with_guard(client, config, None)).await
    }

    /// [`from_client`](Self::from_client) on a connection whose event callback feeds `watch`
    /// ([`PermissionWatch::install`] or [`PermissionWatch::observe`]): permission violations
    /// fail the requests they concern at once, with [`StoreError::PermissionDenied`](cqrs_core::StoreError::PermissionDenied).
    pub async fn from_client_with_watch(
        client: Client,
        config: StoreConfig,
        watch: PermissionWatch,
    ) -> Result<Self, ConnectError> {
        Box::pin(Self::with_guard(client, config, Some(watch))).await
    }

    async fn with_guard(
        client: Client,
        config: StoreConfig,
        watch: Option<PermissionWatch>,
    ) -> Result<Self, ConnectError> {
        let guard = Guard::new(watch, &client);
        let subjects = Subjects::with_partitions(&config.context, config.partitions)?;
        let info = client.server_info();
        match parse_server_version(&info.version) {
            Some(found) if found >= MIN_SERVER_VERSION => {}
            _ => {
                return Err(ConnectError::ServerTooOld {
                    found: info.version.clone(),
                    required: MIN_SERVER_VERSION_TEXT,
                });
            }
        }
        if !info.jetstream {
            return Err(ConnectError::JetStreamDisabled {
                server: format!("{} ({}:{})", info.server_name, info.host, info.port),
            });
        }
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.request_timeout);
        let bucket = config.bucket_name();
        // A tenant-scoped store touches nothing stream-wide: it neither verifies nor creates.
        let (has_bucket, read_guards) = if config.scoped_reads {
            (true, true)
        } else {
            let read_guards = Self::provision_stream(&js, &config, &guard).await?;
            (
                Self::provision_bucket(&js, &config, &guard).await?,
                read_guards,
            )
        };
        let no_info = |e| provision_error(format!("stream {}", config.stream_name()), e);
        let stream = js
            .get_stream_no_info(config.stream_name())
            .await
            .map_err(no_info)?;
        let snapshots = if has_bucket {
            Some(SnapshotBucket::new(&js, &bucket).await.map_err(no_info)?)
        } else {
            None
        };
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                js,
                stream,
                subjects,
                snapshots,
                config,
                known: Mutex::new(KnownHeads::default()),
                replies: tokio::sync::OnceCell::new(),
                guard,
                read_guards,
            }),
        })
    }

    /// Creates or verifies the context's stream; `Ok(false)` when it is a stream of an earlier
    /// version, without read guards, that this store may not update.
    async fn provision_stream(
        js: &jetstream::Context,
        config: &StoreConfig,
        guard: &Guard,
    ) -> Result<bool, ConnectError> {
        let want = config.stream_config();
        let name = want.name.clone();
        let verify = |found: &stream::Config| {
            let diffs = config_differences(&want, found);
            if diffs.is_empty() {
                Ok(true)
            } else {
                Err(ConnectError::StreamConflict {
                    stream: name.clone(),
                    differences: diffs,
                })
            }
        };
        let what = || format!("stream {name}");
        let info = api::stream_info(&name);
        let found = guard.run(&[&info], js.get_stream(&name)).await;
        match found.map_err(|v| ConnectError::denied(what(), &v))? {
            Ok(stream) => {
                let have = &stream.cached_info().config;
                let Some(updated) = with_additions(&want, have) else {
                    return verify(have);
                };
                // Anything else that differs is a conflict, whether or not this store may update.
                verify(&updated)?;
                if !config.create_missing {
                    tracing::warn!(stream = %name, "the stream predates read guards: commits with guards are refused until the context is opened once with create_missing(true)");
                    return Ok(false);
                }
                let update = api::stream_update(&name);
                let updated = guard
                    .run(&[&update], js.update_stream(&updated))
                    .await
                    .map_err(|v| ConnectError::denied(what(), &v))?
                    .map_err(|e| provision_error(what(), e))?;
                tracing::info!(stream = %name, "stream updated: it now stores read guards' carriers ({}.guards.*, with per-message TTLs)", config.context);
                return verify(&updated.config);
            }
            Err(e) if crate::error::is_stream_not_found(&e) => {}
            Err(e) => return Err(provision_error(format!("stream {name}"), e)),
        }
        if !config.create_missing {
            return Err(ConnectError::ContextNotFound {
                context: config.context.clone(),
                stream: name,
            });
        }
        let create = api::stream_create(&name);
        let created = guard.run(&[&create], js.create_stream(want.clone())).await;
        match created.map_err(|v| ConnectError::denied(what(), &v))? {
            Ok(stream) => verify(&stream.cached_info().config),
            Err(create_error) => match js.get_stream(&name).await {
                // Another process created it in between: verify theirs.
                Ok(stream) => verify(&stream.cached_info().config),
                Err(_) => Err(provision_error(format!("stream {name}"), create_error)),
            },
        }
    }

    /// The snapshot bucket: created if missing, unless `create_missing` is false, in which case a
    /// missing bucket means no snapshots (`false`). Its stream is hardened (no roll-ups, no
    /// purges, see [`snapshots::harden`]), an existing one too unless `create_missing` is false.
    async fn provision_bucket(
        js: &jetstream::Context,
        config: &StoreConfig,
        guard: &Guard,
    ) -> Result<bool, ConnectError> {
        let bucket = config.bucket_name();
        let what = || format!("snapshot bucket {bucket}");
        let info = api::stream_info(&crate::layout::kv_stream(&bucket));
        let store = if config.create_missing {
            let create = api::stream_create(&crate::layout::kv_stream(&bucket));
            let opened = crate::bucket::open_or_create(
                js,
                snapshots::bucket_config(&bucket, &config.context, config.replicas),
            );
            guard
                .run(&[&info, &create, "$JS.API.INFO"], opened)
                .await
                .map_err(|v| ConnectError::denied(what(), &v))?
                .map_err(|create_error| provision_error(what(), create_error))?
        } else {
            let opened = guard
                .run(
                    &[&info, "$JS.API.INFO"],
                    crate::bucket::open_existing(js, &bucket),
                )
                .await
                .map_err(|v| ConnectError::denied(what(), &v))?
                .map_err(|error| provision_error(what(), error))?;
            match opened {
                Some(store) => store,
                None => return Ok(false),
            }
        };
        if let Some(hardened) = snapshots::harden(&store.stream.cached_info().config) {
            if config.create_missing {
                let update = api::stream_update(&crate::layout::kv_stream(&bucket));
                guard
                    .run(&[&update], js.update_stream(&hardened))
                    .await
                    .map_err(|v| ConnectError::denied(what(), &v))?
                    .map_err(|error| provision_error(what(), error))?;
                tracing::info!(bucket = %bucket, "snapshot bucket hardened: roll-ups refused, purges denied");
            } else {
                tracing::warn!(bucket = %bucket, "snapshot bucket allows roll-ups, so any user who may write one key can purge all; open the context once with create_missing(true) to harden it");
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_versions() {
        assert_eq!(parse_server_version("2.12.8"), Some((2, 12, 8)));
        assert_eq!(parse_server_version("v2.14.0-RC.1"), Some((2, 14, 0)));
        assert_eq!(parse_server_version("2.9"), Some((2, 9, 0)));
        assert_eq!(parse_server_version("junk"), None);
        assert!(parse_server_version("2.12.0") < Some(MIN_SERVER_VERSION));
        assert!(parse_server_version("2.15.1") >= Some(MIN_SERVER_VERSION));
    }
}
