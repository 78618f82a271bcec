//! The commands: each reads the server and returns the document it prints.

use super::args::StatsBy;
use super::model::{
    Bucket, CliError, ContextDoc, EventDoc, HistoryDoc, ProjectionDoc, ProjectionsDoc, StatsDoc,
    StreamsDoc, TraceDoc, build_trace,
};
use super::progress::Progress;
use crate::async_nats::{self, jetstream};
use crate::deadletter::DeadLetters;
use crate::{JetStreamEventStore, StoreConfig, Subjects};
use cqrs_core::{EventFilter, EventStore, StreamId};
use futures::TryStreamExt;
use std::collections::HashMap;
use std::time::Duration;
use time::UtcOffset;
use uuid::Uuid;

const STREAM_PREFIX: &str = "EVENTS_";

/// What `tail` follows.
pub(crate) struct Tail {
    /// Which events.
    pub(crate) filter: EventFilter,
    /// The first position, or `None` for after the head.
    pub(crate) from: Option<u64>,
    /// Stop after this many events.
    pub(crate) limit: Option<u64>,
    /// Time between polls.
    pub(crate) poll: Duration,
}

/// A connection to the server.
pub(crate) struct Session {
    client: async_nats::Client,
    js: jetstream::Context,
    timeout: Duration,
    /// `--progress`: report the progress of long reads even when stderr is not a terminal.
    progress: bool,
}

impl Session {
    /// Connects to `server` (failing fast if it is unreachable) and checks for JetStream.
    pub(crate) async fn connect(
        server: &str,
        timeout: Duration,
        progress: bool,
    ) -> Result<Self, CliError> {
        let client = async_nats::ConnectOptions::new()
            .name("cqrs-cli")
            .connection_timeout(timeout)
            .request_timeout(Some(timeout))
            .connect(server)
            .await
            .map_err(|source| CliError::Connect {
                server: server.to_owned(),
                source,
            })?;
        if !client.server_info().jetstream {
            return Err(CliError::NoJetStream(server.to_owned()));
        }
        let mut js = jetstream::new(client.clone());
        js.set_timeout(timeout);
        Ok(Self {
            client,
            js,
            timeout,
            progress,
        })
    }

    /// Every `EVENTS_*` stream's info, by context name.
    async fn contexts(&self) -> Result<Vec<(String, jetstream::stream::Info)>, CliError> {
        let infos: Vec<jetstream::stream::Info> = self
            .js
            .streams()
            .try_collect()
            .await
            .map_err(|e| CliError::jetstream("listing streams", e))?;
        let mut out: Vec<(String, jetstream::stream::Info)> = infos
            .into_iter()
            .filter(|info| info.config.name.starts_with(STREAM_PREFIX))
            .map(|info| (context_of(&info), info))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The context to work on: `given` if its stream exists, else the only one on the server.
    pub(crate) async fn resolve_context(&self, given: Option<&str>) -> Result<String, CliError> {
        if let Some(context) = given {
            let stream = StoreConfig::new(context).stream_name();
            return match self.js.get_stream(&stream).await {
                Ok(mut found) => {
                    let info = found
                        .info()
                        .await
                        .map_err(|e| CliError::jetstream(format!("reading stream {stream}"), e))?;
                    Ok(context_of(info))
                }
                Err(e)
                    if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(js)
                        if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
                {
                    Err(CliError::UnknownContext {
                        context: context.to_owned(),
                        stream,
                    })
                }
                Err(e) => Err(CliError::jetstream(format!("reading stream {stream}"), e)),
            };
        }
        let mut contexts = self.contexts().await?;
        match contexts.len() {
            0 => Err(CliError::NoContexts),
            1 => Ok(contexts.remove(0).0),
            _ => Err(CliError::AmbiguousContext(
                contexts
                    .iter()
                    .map(|(name, _)| name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        }
    }

    /// Opens the store of `context` with its stream's existing settings, so that opening
    /// verifies rather than conflicts (the stream exists: `resolve_context` checked it).
    async fn store(&self, context: &str) -> Result<JetStreamEventStore, CliError> {
        let mut config = StoreConfig::new(context).request_timeout(self.timeout);
        let name = config.stream_name();
        if let Ok(mut stream) = self.js.get_stream(&name).await
            && let Ok(info) = stream.info().await
        {
            config = config
                .replicas(info.config.num_replicas)
                .duplicate_window(info.config.duplicate_window);
        }
        Ok(JetStreamEventStore::from_client(self.client.clone(), config).await?)
    }

    /// `history`.
    pub(crate) async fn history(
        &self,
        context: &str,
        aggregate_type: &str,
        id: &str,
        tenant: Option<&str>,
    ) -> Result<HistoryDoc, CliError> {
        let store = self.store(context).await?;
        let stream =
            StreamId::new(aggregate_type, id).with_optional_tenant(tenant.map(str::to_owned));
        let mut events = Vec::new();
        let mut read = store.load(&stream, 1).await?;
        let mut progress = Progress::stderr(
            format!("{aggregate_type}/{id}"),
            "loaded",
            if Progress::wanted(self.progress) {
                self.aggregate_length(context, tenant, aggregate_type, id)
                    .await
            } else {
                None
            },
            self.progress,
        );
        while let Some(event) = read.try_next().await? {
            progress.tick();
            events.push(EventDoc::from(event));
        }
        progress.finish();
        Ok(HistoryDoc {
            context: context.to_owned(),
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: id.to_owned(),
            tenant: tenant.map(str::to_owned),
            events,
        })
    }

    /// `trace`.
    pub(crate) async fn trace(
        &self,
        context: &str,
        correlation_id: Uuid,
    ) -> Result<TraceDoc, CliError> {
        let store = self.store(context).await?;
        let mut progress = self.scan_progress(context).await?;
        let mut all = store.read_all(&EventFilter::all(), 1).await?;
        let mut events = Vec::new();
        while let Some(event) = all.try_next().await? {
            progress.tick();
            if event.metadata.correlation_id == correlation_id {
                events.push(EventDoc::from(event));
            }
        }
        progress.finish();
        Ok(build_trace(context.to_owned(), correlation_id, events))
    }

    /// `tail`: calls `print` for each new event matching the filter until the limit.
    pub(crate) async fn tail(
        &self,
        context: &str,
        tail: &Tail,
        print: &mut dyn FnMut(&EventDoc) -> Result<(), CliError>,
    ) -> Result<(), CliError> {
        let store = self.store(context).await?;
        let mut next = match tail.from {
            Some(from) => from.max(1),
            None => self.head(context).await? + 1,
        };
        let mut printed = 0;
        loop {
            let head = self.head(context).await?;
            let mut events = store.read_all(&tail.filter, next).await?;
            while let Some(event) = events.try_next().await? {
                next = event.position + 1;
                print(&EventDoc::from(event))?;
                printed += 1;
                if tail.limit.is_some_and(|limit| printed >= limit) {
                    return Ok(());
                }
            }
            // Everything up to the head seen before the read was read; what the filter skipped
            // need not be read again.
            next = next.max(head + 1);
            tokio::time::sleep(tail.poll).await;
        }
    }

    /// The state of the context's stream.
    async fn stream_state(
        &self,
        context: &str,
    ) -> Result<(String, jetstream::stream::State), CliError> {
        let name = StoreConfig::new(context).stream_name();
        let mut stream = self
            .js
            .get_stream(&name)
            .await
            .map_err(|e| CliError::jetstream(format!("reading stream {name}"), e))?;
        let state = stream
            .info()
            .await
            .map_err(|e| CliError::jetstream(format!("reading stream {name}"), e))?
            .state
            .clone();
        Ok((name, state))
    }

    /// The last position of the context's stream.
    async fn head(&self, context: &str) -> Result<u64, CliError> {
        Ok(self.stream_state(context).await?.1.last_sequence)
    }

    /// The progress of a scan of the context's whole stream.
    async fn scan_progress(&self, context: &str) -> Result<Progress, CliError> {
        let (name, state) = self.stream_state(context).await?;
        Ok(Progress::stderr(
            name,
            "scanned",
            Some(state.messages),
            self.progress,
        ))
    }

    /// How many events one aggregate has (its subject's message count), if the server says.
    async fn aggregate_length(
        &self,
        context: &str,
        tenant: Option<&str>,
        aggregate_type: &str,
        id: &str,
    ) -> Option<u64> {
        let subject = Subjects::new(context)
            .ok()?
            .aggregate(tenant, aggregate_type, id)
            .ok()?;
        let stream = self
            .js
            .get_stream(StoreConfig::new(context).stream_name())
            .await
            .ok()?;
        let counts: Vec<(String, usize)> = stream
            .info_with_subjects(subject)
            .await
            .ok()?
            .try_collect()
            .await
            .ok()?;
        Some(counts.iter().map(|(_, n)| *n as u64).sum())
    }

    /// `streams`.
    pub(crate) async fn streams(&self) -> Result<StreamsDoc, CliError> {
        let contexts = self
            .contexts()
            .await?
            .into_iter()
            .map(|(context, info)| ContextDoc {
                context,
                stream: info.config.name,
                events: info.state.messages,
                bytes: info.state.bytes,
                first_position: info.state.first_sequence,
                last_position: info.state.last_sequence,
                aggregates: info.state.subjects_count,
                consumers: info.state.consumer_count,
            })
            .collect();
        Ok(StreamsDoc { contexts })
    }

    /// `stats`.
    pub(crate) async fn stats(&self, context: &str, by: StatsBy) -> Result<StatsDoc, CliError> {
        let store = self.store(context).await?;
        let mut progress = self.scan_progress(context).await?;
        let mut all = store.read_all(&EventFilter::all(), 1).await?;
        let mut counts: HashMap<String, u64> = HashMap::new();
        let mut total = 0;
        while let Some(event) = all.try_next().await? {
            progress.tick();
            let at = event.recorded_at.to_offset(UtcOffset::UTC);
            let key = match by {
                StatsBy::Type => event.payload.event_type,
                StatsBy::Aggregate => event.aggregate_type,
                StatsBy::Hour => format!(
                    "{:04}-{:02}-{:02}T{:02}:00Z",
                    at.year(),
                    u8::from(at.month()),
                    at.day(),
                    at.hour()
                ),
                StatsBy::Day => {
                    format!(
                        "{:04}-{:02}-{:02}",
                        at.year(),
                        u8::from(at.month()),
                        at.day()
                    )
                }
            };
            *counts.entry(key).or_default() += 1;
            total += 1;
        }
        progress.finish();
        let mut buckets: Vec<Bucket> = counts
            .into_iter()
            .map(|(key, count)| Bucket { key, count })
            .collect();
        match by {
            StatsBy::Type | StatsBy::Aggregate => {
                buckets.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
            }
            StatsBy::Hour | StatsBy::Day => buckets.sort_by(|a, b| a.key.cmp(&b.key)),
        }
        Ok(StatsDoc {
            context: context.to_owned(),
            by: match by {
                StatsBy::Type => "type",
                StatsBy::Aggregate => "aggregate",
                StatsBy::Hour => "hour",
                StatsBy::Day => "day",
            },
            total,
            buckets,
        })
    }

    /// `projections`.
    pub(crate) async fn projections(&self, context: &str) -> Result<ProjectionsDoc, CliError> {
        let name = StoreConfig::new(context).stream_name();
        let mut stream = self
            .js
            .get_stream(&name)
            .await
            .map_err(|e| CliError::jetstream(format!("reading stream {name}"), e))?;
        let head = stream
            .info()
            .await
            .map_err(|e| CliError::jetstream(format!("reading stream {name}"), e))?
            .state
            .last_sequence;
        let consumers: Vec<jetstream::consumer::Info> = stream
            .consumers()
            .try_collect()
            .await
            .map_err(|e| CliError::jetstream(format!("listing the consumers of {name}"), e))?;
        let parked = self.parked(context).await?;
        let mut projections: Vec<ProjectionDoc> = consumers
            .into_iter()
            .filter_map(|info| {
                let durable = info.config.durable_name.clone()?;
                Some(ProjectionDoc {
                    parked: parked.get(&durable).copied().unwrap_or(0),
                    name: durable,
                    pending: info.num_pending,
                    ack_pending: info.num_ack_pending,
                    redelivered: info.num_redelivered,
                    delivered_position: info.delivered.stream_sequence,
                    acked_position: info.ack_floor.stream_sequence,
                    consumer: true,
                })
            })
            .collect();
        for (projection, count) in parked {
            if !projections.iter().any(|p| p.name == projection) {
                projections.push(ProjectionDoc {
                    name: projection,
                    pending: 0,
                    ack_pending: 0,
                    redelivered: 0,
                    delivered_position: 0,
                    acked_position: 0,
                    parked: count,
                    consumer: false,
                });
            }
        }
        projections.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ProjectionsDoc {
            context: context.to_owned(),
            stream: name,
            head,
            projections,
        })
    }

    /// Parked events per projection on the context's dead-letter stream (none if it is absent).
    async fn parked(&self, context: &str) -> Result<HashMap<String, u64>, CliError> {
        let name = DeadLetters::stream_name_for(context);
        let Ok(stream) = self.js.get_stream(&name).await else {
            return Ok(HashMap::new());
        };
        let prefix = format!("{context}.deadletter.");
        let subjects: Vec<(String, usize)> = stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(|e| CliError::jetstream(format!("reading stream {name}"), e))?
            .try_collect()
            .await
            .map_err(|e| CliError::jetstream(format!("reading stream {name}"), e))?;
        let mut out = HashMap::new();
        for (subject, count) in subjects {
            if let Some(projection) = subject.strip_prefix(&prefix) {
                *out.entry(projection.to_owned()).or_default() += count as u64;
            }
        }
        Ok(out)
    }
}

/// The context of an `EVENTS_*` stream: the prefix of its `<context>.events.>` subject, else
/// the lower-cased stream name suffix.
fn context_of(info: &jetstream::stream::Info) -> String {
    info.config
        .subjects
        .iter()
        .find_map(|s| s.strip_suffix(".events.>"))
        .map_or_else(
            || {
                info.config
                    .name
                    .trim_start_matches(STREAM_PREFIX)
                    .to_lowercase()
            },
            str::to_owned,
        )
}
