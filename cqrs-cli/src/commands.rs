//! The commands: each reads the server and returns the document it prints.

use super::args::StatsBy;
use super::model::{
    Bucket, CliError, ContextDoc, EventDoc, ExportLine, HealthCheck, HealthDoc, HistoryDoc,
    ImportDoc, ImportLine, ProjectionDoc, ProjectionsDoc, ReplayDoc, ReplayFromDoc, StatsDoc,
    StreamsDoc, SwitchOutcome, SwitchOverDoc, TraceDoc, build_trace, version_of,
};
use super::personal::Redactor;
use super::progress::Progress;
use cqrs_core::{EventFilter, EventStore, StreamId};
use cqrs_nats::async_nats::{self, jetstream};
use cqrs_nats::deadletter::DeadLetters;
use cqrs_nats::projection::{
    Lag, LiveVersion, StartFrom, SwitchOver, live_workers, read_checkpoints, read_live_versions,
    reset_checkpoints, versioned_name,
};
use cqrs_nats::{JetStreamEventStore, JetStreamProjectionRunner, StoreConfig, Subjects};
use futures::{StreamExt, TryStreamExt};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use time::UtcOffset;
use uuid::Uuid;

const STREAM_PREFIX: &str = cqrs_nats::layout::EVENTS_STREAM_PREFIX;

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
            .map(|info| (context_of(&info.config), info))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The context to work on: `given` if its stream exists, else the only one on the server.
    pub(crate) async fn resolve_context(&self, given: Option<&str>) -> Result<String, CliError> {
        if let Some(context) = given {
            let stream = StoreConfig::new(context).stream_name();
            return match self.js.get_stream(&stream).await {
                // Getting the stream fetched its info.
                Ok(found) => Ok(context_of(&found.cached_info().config)),
                Err(e) if cqrs_nats::error::is_stream_not_found(&e) => {
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

    /// Opens the store of `context` with its stream's existing settings (partitions, replicas,
    /// duplicate window), so that opening verifies rather than conflicts (the stream exists:
    /// `resolve_context` checked it). Reading never creates anything, not even the snapshot
    /// bucket.
    async fn store(&self, context: &str) -> Result<JetStreamEventStore, CliError> {
        let (_, info) = self.stream_info(context).await?;
        let subjects = subjects_of(&info.config)?;
        let config = StoreConfig::new(subjects.context())
            .partitions(subjects.partitions())
            .request_timeout(self.timeout)
            .replicas(info.config.num_replicas)
            .duplicate_window(info.config.duplicate_window)
            .create_missing(false);
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
        let mut redactor = Redactor::new(store.jetstream(), context);
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
            events.push(redactor.doc(event).await?);
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
        let mut redactor = Redactor::new(store.jetstream(), context);
        let mut progress = self.scan_progress(context).await?;
        let mut all = store.read_all(&EventFilter::all(), 1).await?;
        let mut events = Vec::new();
        while let Some(event) = all.try_next().await? {
            progress.tick();
            if event.metadata.correlation_id == correlation_id {
                events.push(redactor.doc(event).await?);
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
        let mut redactor = Redactor::new(store.jetstream(), context);
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
                print(&redactor.doc(event).await?)?;
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

    /// `export`: the raw messages of the context's events from position `from` up to the
    /// current head, one NDJSON line each (see `args::Command::Export`), written to `out` as
    /// they arrive. Returns how many.
    pub(crate) async fn export(
        &self,
        context: &str,
        from: u64,
        out: &mut dyn std::io::Write,
    ) -> Result<u64, CliError> {
        use cqrs_nats::async_nats::jetstream::consumer::{DeliverPolicy, pull};
        let (name, stream, info) = self.stream(context).await?;
        let subjects = subjects_of(&info.config)?;
        let head = info.state.last_sequence;
        let from = from.max(1);
        let mut progress = Progress::stderr(
            name.clone(),
            "exported",
            Some(head.saturating_sub(from - 1).min(info.state.messages)),
            self.progress,
        );
        let mut exported = 0;
        if head < from {
            progress.finish();
            return Ok(exported);
        }
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: format!("{context}.events.>"),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| CliError::jetstream(format!("reading stream {name}"), e))?;
        if consumer.cached_info().num_pending == 0 {
            progress.finish();
            return Ok(exported);
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| CliError::jetstream(format!("reading stream {name}"), e))?;
        while let Some(message) = messages.next().await {
            let message =
                message.map_err(|e| CliError::jetstream(format!("reading stream {name}"), e))?;
            let info = message
                .info()
                .map_err(|e| CliError::jetstream(format!("reading stream {name}"), e))?;
            let (position, pending, time) = (info.stream_sequence, info.pending, info.published);
            if position > head {
                break;
            }
            let line = ExportLine::of(&subjects, position, time, &message.message);
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n").map_err(CliError::Output)?;
            exported += 1;
            progress.tick();
            if position == head || pending == 0 {
                break;
            }
        }
        progress.finish();
        Ok(exported)
    }

    /// `import`: the lines of an export read from `input`, appended to `context` (created if
    /// missing) aggregate by aggregate in version order (see `args::Command::Import`).
    pub(crate) async fn import(
        &self,
        context: &str,
        input: Box<dyn std::io::BufRead>,
    ) -> Result<ImportDoc, CliError> {
        let config = StoreConfig::new(context).request_timeout(self.timeout);
        let store = JetStreamEventStore::from_client(self.client.clone(), config).await?;
        let subjects = store.subjects().clone();
        let stream = self.js.get_stream(store.stream_name()).await.map_err(|e| {
            CliError::jetstream(format!("reading stream {}", store.stream_name()), e)
        })?;
        let mut progress = Progress::stderr(store.stream_name(), "imported", None, self.progress);
        // Per aggregate subject: the version, stream sequence and id of its last event here
        // (when it was there before the import).
        let mut heads: HashMap<String, Head> = HashMap::new();
        let mut doc = ImportDoc {
            context: context.to_owned(),
            imported: 0,
            skipped: 0,
            ignored: 0,
        };
        for (number, line) in (1..).zip(std::io::BufRead::lines(input)) {
            let line = line.map_err(CliError::Input)?;
            if line.trim().is_empty() {
                continue;
            }
            let bad = |reason: String| CliError::BadImport {
                line: number,
                reason,
            };
            let exported: ImportLine = serde_json::from_str(&line)
                .map_err(|e| bad(format!("not a line of `cqrs export`: {e}")))?;
            let Some(target) = retarget(&subjects, &exported.subject) else {
                doc.ignored += 1;
                continue;
            };
            let (version, event_id) = imported_identity(&exported).map_err(bad)?;
            let stored = subjects.stored(&target).map_err(|e| bad(e.to_string()))?;
            let head = match heads.get(&target) {
                Some(head) => *head,
                None => last_of(&stream, &stored).await?,
            };
            let (head_version, head_sequence) = (head.version, head.sequence);
            if version <= head_version {
                // Already there. The export lists every version, so each aggregate's last
                // event here is met once: its id says whether this is the same history.
                if version == head_version && head.id != Some(event_id) {
                    return Err(bad(format!(
                        "{target} already has another event at version {version}; import into a fresh context"
                    )));
                }
                doc.skipped += 1;
                heads.insert(target, head);
                continue;
            }
            if version != head_version + 1 {
                return Err(bad(format!(
                    "{target} is at version {head_version} here, the line holds version {version}: an export from position 1 has every version"
                )));
            }
            let sequence = self
                .publish_imported(&target, &exported, head_sequence)
                .await
                .map_err(|e| bad(cqrs_core::error::report(&*e)))?;
            heads.insert(
                target,
                Head {
                    version,
                    sequence,
                    id: Some(event_id),
                },
            );
            doc.imported += 1;
            progress.tick();
        }
        progress.finish();
        Ok(doc)
    }

    /// Publishes one imported event to `subject`, expecting its aggregate's last event at
    /// stream sequence `after`; returns the new event's sequence.
    async fn publish_imported(
        &self,
        subject: &str,
        exported: &ImportLine,
        after: u64,
    ) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
        let mut headers = async_nats::HeaderMap::new();
        for (name, values) in &exported.headers {
            // The writer's expectations and batch markers were for the server it wrote to.
            if IMPORT_DROPS.iter().any(|prefix| name.starts_with(prefix)) {
                continue;
            }
            for value in values {
                headers.append(name.as_str(), value.as_str());
            }
        }
        headers.insert(
            cqrs_nats::headers::EXPECTED_LAST_SUBJECT_SEQUENCE,
            after.to_string().as_str(),
        );
        let body: Vec<u8> = match (&exported.body, &exported.body_hex) {
            (Some(text), _) => text.clone().into_bytes(),
            (None, Some(hex)) => from_hex(hex)?,
            (None, None) => Vec::new(),
        };
        let ack = self
            .js
            .publish_with_headers(subject.to_owned(), headers, body.into())
            .await?
            .await?;
        Ok(ack.sequence)
    }

    /// The context's stream and its info.
    async fn stream(
        &self,
        context: &str,
    ) -> Result<(String, jetstream::stream::Stream, jetstream::stream::Info), CliError> {
        let name = StoreConfig::new(context).stream_name();
        // Getting the stream fetches its info: no second request needed.
        let stream = self
            .js
            .get_stream(&name)
            .await
            .map_err(|e| CliError::jetstream(format!("reading stream {name}"), e))?;
        let info = stream.cached_info().clone();
        Ok((name, stream, info))
    }

    /// The info of the context's stream.
    async fn stream_info(
        &self,
        context: &str,
    ) -> Result<(String, jetstream::stream::Info), CliError> {
        let (name, _, info) = self.stream(context).await?;
        Ok((name, info))
    }

    /// The state of the context's stream.
    async fn stream_state(
        &self,
        context: &str,
    ) -> Result<(String, jetstream::stream::State), CliError> {
        let (name, info) = self.stream_info(context).await?;
        Ok((name, info.state))
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

    /// How many events one aggregate has (its stored subject's message count), if the server
    /// says.
    async fn aggregate_length(
        &self,
        context: &str,
        tenant: Option<&str>,
        aggregate_type: &str,
        id: &str,
    ) -> Option<u64> {
        let (_, stream, info) = self.stream(context).await.ok()?;
        let subjects = subjects_of(&info.config).ok()?;
        let subject = subjects
            .stored(&subjects.aggregate(tenant, aggregate_type, id).ok()?)
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

    /// `projections`: the checkpoints of the context's projections, those of one projection
    /// (one per partition) as one row.
    pub(crate) async fn projections(&self, context: &str) -> Result<ProjectionsDoc, CliError> {
        let (name, stream, info) = self.stream(context).await?;
        let parked = self.parked(context).await?;
        let (workers, checkpoints, live) = match Subjects::from_stream_config(&info.config) {
            Some(subjects) => (
                live_workers(&self.js, &subjects).await?,
                read_checkpoints(&self.js, &subjects).await?,
                self.live_versions(&subjects).await?,
            ),
            None => (BTreeMap::new(), BTreeMap::new(), BTreeMap::new()),
        };
        let mut groups: BTreeMap<String, ProjectionDoc> = BTreeMap::new();
        for (projection, partitions) in checkpoints {
            let lag = Lag::of_checkpoints(&stream, &partitions).await?;
            let doc = groups
                .entry(projection.clone())
                .or_insert_with(|| ProjectionDoc::empty(projection));
            doc.checkpoints = true;
            doc.partitions = partitions.len();
            doc.owned = partitions.values().filter(|c| c.owner.is_some()).count();
            doc.lag = lag.total;
            doc.position = partitions.values().map(|c| c.position).min().unwrap_or(0);
            doc.highest_position = partitions.values().map(|c| c.position).max().unwrap_or(0);
        }
        for (projection, count) in parked {
            groups
                .entry(projection.clone())
                .or_insert_with(|| ProjectionDoc::empty(projection))
                .parked = count;
        }
        let names: BTreeSet<String> = groups.keys().cloned().collect();
        let is_base = |base: &str| live.contains_key(base) || names.contains(base);
        let projections = groups
            .into_values()
            .map(|mut doc| {
                doc.workers = workers.get(&doc.name).copied().unwrap_or(0);
                let (base, version) = version_of(&doc.name, is_base);
                doc.live = match live.get(base) {
                    Some(live) => Some(live.version == version),
                    None if doc.checkpoints => Some(version == 1),
                    None => None,
                };
                doc
            })
            .collect();
        Ok(ProjectionsDoc {
            context: context.to_owned(),
            stream: name,
            head: info.state.last_sequence,
            projections,
        })
    }

    /// `health`: the server, the events stream's replicas, every live projection's lag and
    /// parked events.
    pub(crate) async fn health(&self, context: &str, max_lag: u64) -> Result<HealthDoc, CliError> {
        let info = self.client.server_info();
        let mut checks = vec![HealthCheck {
            check: "server".to_owned(),
            ok: true,
            detail: format!(
                "nats-server {} ({}), JetStream on",
                info.version, info.server_name
            ),
        }];
        let (name, _, stream) = self.stream(context).await?;
        checks.push(stream_check(&name, stream.cluster.as_ref()));
        for projection in self.projections(context).await?.projections {
            let mut problems = Vec::new();
            if projection.live != Some(false) && projection.lag > max_lag {
                problems.push(format!("lag {} > {max_lag}", projection.lag));
            }
            if projection.parked > 0 {
                problems.push(format!("{} parked", projection.parked));
            }
            checks.push(HealthCheck {
                check: format!("projection {}", projection.name),
                ok: problems.is_empty(),
                detail: if problems.is_empty() {
                    format!("lag {}, nothing parked", projection.lag)
                } else {
                    problems.join(", ")
                },
            });
        }
        Ok(HealthDoc {
            context: context.to_owned(),
            healthy: checks.iter().all(|c| c.ok),
            checks,
        })
    }

    /// `replay`: moves the checkpoints of `projection` to `from`; without `yes` only
    /// says what it would do (an error with exit code 2).
    pub(crate) async fn replay(
        &self,
        context: &str,
        projection: &str,
        from: ReplayFromDoc,
        yes: bool,
    ) -> Result<ReplayDoc, CliError> {
        let (_, _, info) = self.stream(context).await?;
        let subjects = subjects_of(&info.config)?;
        let partitions = read_checkpoints(&self.js, &subjects)
            .await?
            .get(projection)
            .map_or(0, BTreeMap::len);
        let unknown = || CliError::UnknownProjection {
            projection: projection.to_owned(),
            context: context.to_owned(),
        };
        if partitions == 0 {
            return Err(unknown());
        }
        let workers = live_workers(&self.js, &subjects)
            .await?
            .get(projection)
            .copied()
            .unwrap_or(0);
        if !yes {
            return Err(CliError::NotConfirmed(format!(
                "replay would move the checkpoints of projection `{projection}` in context \
                 `{context}` ({partitions} partition{}) to {}, and {}",
                plural(partitions),
                from.describe(),
                match workers {
                    0 => "no worker is running it now".to_owned(),
                    n => format!(
                        "its {n} live worker{} would process the events again",
                        plural(n)
                    ),
                }
            )));
        }
        let start = match (from.position, from.time) {
            (Some(position), _) => StartFrom::Position(position),
            (None, Some(time)) => StartFrom::Time(time),
            (None, None) => StartFrom::Beginning,
        };
        let partitions_reset = reset_checkpoints(&self.js, context, projection, start).await?;
        if partitions_reset == 0 {
            return Err(unknown());
        }
        Ok(ReplayDoc {
            projection: projection.to_owned(),
            context: context.to_owned(),
            partitions_reset,
            workers,
            from,
        })
    }

    /// `switch-over`: makes version `to` of `projection` the live one
    /// ([`JetStreamProjectionRunner::switch_over`]); without `yes` only says what it would do
    /// (an error with exit code 2). A refusal is a document too (its outcome says so).
    pub(crate) async fn switch_over(
        &self,
        context: &str,
        projection: &str,
        to: u32,
        patience: Duration,
        yes: bool,
    ) -> Result<SwitchOverDoc, CliError> {
        let (_, stream, info) = self.stream(context).await?;
        let subjects = subjects_of(&info.config)?;
        let checkpoints = read_checkpoints(&self.js, &subjects).await?;
        let lives = self.live_versions(&subjects).await?;
        let (base, version) = version_of(projection, |base| {
            lives.contains_key(base) || checkpoints.contains_key(base)
        });
        if version > 1 {
            return Err(CliError::VersionName {
                projection: projection.to_owned(),
                base: base.to_owned(),
                version,
            });
        }
        // Known: a version of it has checkpoints, or it has a live version recorded (which
        // switch-over writes into the checkpoints bucket: nothing is created).
        let known = lives.contains_key(projection)
            || checkpoints
                .keys()
                .any(|name| version_of(name, |base| base == projection).0 == projection);
        if !known {
            return Err(CliError::UnknownProjection {
                projection: projection.to_owned(),
                context: context.to_owned(),
            });
        }
        if !yes {
            let live = lives.get(projection).copied().unwrap_or(LiveVersion {
                version: 1,
                next: None,
            });
            let of = |version: u32| checkpoints.get(&versioned_name(projection, version));
            let none = BTreeMap::new();
            let target = of(to).unwrap_or(&none);
            let lags = (
                Lag::of_checkpoints(&stream, target).await?.total,
                Lag::of_checkpoints(&stream, of(live.version).unwrap_or(&none))
                    .await?
                    .total,
            );
            let partitions = (target.len(), subjects.partitions() as usize);
            return Err(CliError::NotConfirmed(would_switch(
                context, projection, to, live, partitions, lags,
            )));
        }
        let store = self.store(context).await?;
        let outcome =
            match JetStreamProjectionRunner::switch_over(&store, projection, to, patience).await? {
                SwitchOver::Switched {
                    from,
                    to: _,
                    checkpoints_removed,
                } => SwitchOutcome::Switched {
                    from,
                    checkpoints_removed,
                },
                SwitchOver::NotCaughtUp {
                    lag,
                    partitions_without_checkpoint,
                } => SwitchOutcome::NotCaughtUp {
                    lag,
                    partitions_without_checkpoint,
                    switch_under_way: self
                        .live_versions(&subjects)
                        .await?
                        .get(projection)
                        .is_some_and(|live| live.next.is_some()),
                },
                SwitchOver::AlreadyLive { live } => SwitchOutcome::AlreadyLive { live },
            };
        Ok(SwitchOverDoc {
            projection: projection.to_owned(),
            context: context.to_owned(),
            to,
            outcome,
        })
    }

    /// The recorded live versions of the context's projections ([`read_live_versions`]).
    async fn live_versions(
        &self,
        subjects: &Subjects,
    ) -> Result<BTreeMap<String, LiveVersion>, CliError> {
        Ok(read_live_versions(&self.js, subjects).await?)
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

/// What `switch-over` without `--yes` says it would do: make version `to` live, `live` being
/// the live version; `partitions`: the target's checkpoints and the partitions in all; `lags`:
/// the target's and the live version's events behind the head.
fn would_switch(
    context: &str,
    projection: &str,
    to: u32,
    live: LiveVersion,
    (checkpoints, partitions): (usize, usize),
    (target_lag, live_lag): (u64, u64),
) -> String {
    let under_way = live.next.map_or_else(String::new, |next| {
        format!(", a switch to version {next} under way: its runners stopped")
    });
    let verdict = if to <= live.version {
        format!("; refused: version {} is live already", live.version)
    } else if live.next == Some(to) {
        "; it would wait for it to catch up with where they stopped and complete the switch"
            .to_owned()
    } else if checkpoints < partitions {
        "; refused until it has a checkpoint on every partition".to_owned()
    } else {
        format!(
            "; once it has caught up, the runners of version {} would stop and its checkpoints \
             be removed",
            live.version
        )
    };
    let events = |n: u64| format!("{n} event{}", plural(usize::try_from(n).unwrap_or(2)));
    format!(
        "switch-over would make version {to} of projection `{projection}` in context \
         `{context}` live (live now: version {}{under_way}); version {to} (`{}`) has checkpoints \
         on {checkpoints} of {partitions} partitions and is {} behind the head (version {}: \
         {}){verdict}",
        live.version,
        versioned_name(projection, to),
        events(target_lag),
        live.version,
        events(live_lag),
    )
}

/// `s` after a count `n` of something.
fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The subjects (partition count included) of the events stream with `config`.
fn subjects_of(config: &jetstream::stream::Config) -> Result<Subjects, CliError> {
    Subjects::from_stream_config(config).ok_or_else(|| CliError::NotAnEventStream {
        stream: config.name.clone(),
        subjects: config.subjects.join(", "),
    })
}

/// The context of an `EVENTS_*` stream: the prefix of the subject it listens on,
/// `<context>.events.*.*.*` (or `<context>.events.>`, the unpartitioned layout of earlier
/// versions), else the lower-cased stream name suffix.
fn context_of(config: &jetstream::stream::Config) -> String {
    config
        .subjects
        .iter()
        .find_map(|s| {
            s.strip_suffix(".events.*.*.*")
                .or_else(|| s.strip_suffix(".events.>"))
        })
        .map_or_else(
            || config.name.trim_start_matches(STREAM_PREFIX).to_lowercase(),
            str::to_owned,
        )
}

/// Headers an import does not copy: expectations and batch markers of the original write.
const IMPORT_DROPS: [&str; 4] = ["Nats-Expected-", "Nats-Batch-", "Nats-TTL", "Nats-Rollup"];

/// `subject` (an exported event's) in the target context: `<source>.events.<tenant>.<type>.<id>`
/// becomes `<context>.events.<tenant>.<type>.<id>`; `None` for anything else.
fn retarget(subjects: &Subjects, subject: &str) -> Option<String> {
    let mut tokens = subject.split('.');
    let (Some(_source), Some("events"), Some(tenant), Some(aggregate_type), Some(id), None) = (
        tokens.next(),
        tokens.next(),
        tokens.next(),
        tokens.next(),
        tokens.next(),
        tokens.next(),
    ) else {
        return None;
    };
    Some(format!(
        "{}.events.{tenant}.{aggregate_type}.{id}",
        subjects.context()
    ))
}

/// The aggregate version and event id of an exported event, from its envelope and message id.
fn imported_identity(line: &ImportLine) -> Result<(u64, Uuid), String> {
    let first = |name: &str| line.headers.get(name).and_then(|v| v.first());
    let envelope = first(cqrs_nats::headers::ENVELOPE).ok_or(
        "the event has no Cqrs-Envelope header (events of the first wire format are not imported)",
    )?;
    let version = envelope_version(envelope).ok_or("the envelope has no version")?;
    let event_id = first(cqrs_nats::headers::MSG_ID)
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or("the event has no event id (Nats-Msg-Id)")?;
    Ok((version, event_id))
}

/// The aggregate version a `Cqrs-Envelope` header states.
fn envelope_version(envelope: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(envelope)
        .ok()?
        .get("version")?
        .as_u64()
}

/// An aggregate's last event in the target context.
#[derive(Clone, Copy)]
struct Head {
    version: u64,
    sequence: u64,
    id: Option<Uuid>,
}

/// The last event stored under `stored` (version and sequence 0 for none).
async fn last_of(stream: &jetstream::stream::Stream, stored: &str) -> Result<Head, CliError> {
    use cqrs_nats::async_nats::jetstream::stream::LastRawMessageErrorKind as K;
    match stream.get_last_raw_message_by_subject(stored).await {
        Ok(message) => {
            let header = |name: &str| {
                message
                    .headers
                    .get(name)
                    .map(cqrs_nats::async_nats::HeaderValue::as_str)
            };
            let version = header(cqrs_nats::headers::ENVELOPE)
                .and_then(envelope_version)
                .unwrap_or(0);
            let id = header(cqrs_nats::headers::MSG_ID).and_then(|id| Uuid::parse_str(id).ok());
            Ok(Head {
                version,
                sequence: message.sequence,
                id,
            })
        }
        Err(e) if e.kind() == K::NoMessageFound => Ok(Head {
            version: 0,
            sequence: 0,
            id: None,
        }),
        Err(e) => Err(CliError::jetstream(
            format!("reading the last event of {stored}"),
            e,
        )),
    }
}

/// The events stream's replication: a leader, and every replica current and online (a single
/// server reports no cluster, or a leader with no replicas).
fn stream_check(name: &str, cluster: Option<&jetstream::stream::ClusterInfo>) -> HealthCheck {
    let check = "stream".to_owned();
    let Some(cluster) = cluster else {
        return HealthCheck {
            check,
            ok: true,
            detail: format!("{name} on a single server"),
        };
    };
    let Some(leader) = &cluster.leader else {
        return HealthCheck {
            check,
            ok: false,
            detail: format!("{name} has no leader"),
        };
    };
    let behind: Vec<String> = cluster
        .replicas
        .iter()
        .filter(|r| !r.current || r.offline)
        .map(|r| {
            let state = if r.offline { "offline" } else { "not current" };
            format!("{} {state}", r.name)
        })
        .collect();
    HealthCheck {
        check,
        ok: behind.is_empty(),
        detail: if behind.is_empty() {
            format!(
                "{name}: leader {leader}, {} replica(s) current",
                cluster.replicas.len()
            )
        } else {
            format!("{name}: leader {leader}, {}", behind.join(", "))
        },
    }
}

/// Bytes from the lower-case hex of `export`'s `body_hex`.
fn from_hex(hex: &str) -> Result<Vec<u8>, String> {
    if hex.len() % 2 != 0 {
        return Err("body_hex has an odd length".to_owned());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|e| format!("body_hex: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetstream::stream::Config;

    #[test]
    fn contexts_of_streams() {
        let partitioned = StoreConfig::new("Sales").stream_config();
        assert_eq!(context_of(&partitioned), "Sales");
        assert_eq!(subjects_of(&partitioned).ok(), Subjects::new("Sales").ok());
        let old = Config {
            name: "EVENTS_BANK".to_owned(),
            subjects: vec!["bank.events.>".to_owned()],
            ..Default::default()
        };
        assert_eq!(context_of(&old), "bank");
        assert!(subjects_of(&old).is_err());
        let other = Config {
            name: "EVENTS_MISC".to_owned(),
            subjects: vec!["misc.>".to_owned()],
            ..Default::default()
        };
        assert_eq!(context_of(&other), "misc");
    }
}
