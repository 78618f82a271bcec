//! `read_all`: an ordered consumer over the whole stream, filtered as narrowly as the filter
//! allows, ending at the head as of the call.

use super::JetStreamEventStore;
use super::failure::unavailable_because;
use crate::gaps::ToHead;
use crate::headers;
use crate::permissions::api;
use async_nats::jetstream;
use cqrs_core::{EventFilter, EventStream, StoreError, StreamId};
use futures::stream::{self as fstream, StreamExt};
use std::sync::Arc;
use uuid::Uuid;

impl JetStreamEventStore {
    pub(super) async fn read_all_inner(
        &self,
        filter: &EventFilter,
        from_position: u64,
    ) -> Result<EventStream, StoreError> {
        use jetstream::consumer::{DeliverPolicy, pull};
        const OP: &str = "read all";
        if self.inner.config.scoped_reads {
            return self.inner.read_all_scoped(filter, from_position).await;
        }
        let all = StreamId::new("*", "*");
        let info = [api::stream_info(self.inner.stream_name())];
        let stream = self
            .inner
            .guarded(
                OP,
                &all,
                &info,
                self.inner.js.get_stream(self.inner.stream_name()),
            )
            .await?
            .map_err(|e| unavailable_because(OP, "getting the stream", e))?;
        let head = stream.cached_info().state.last_sequence;
        let start = from_position.max(1);
        if start > head {
            return Ok(fstream::empty().boxed());
        }
        let filters = crate::projection::filter_subjects(&self.inner.subjects, filter);
        let (filter_subject, filter_subjects) = if filters.len() == 1 {
            (filters[0].clone(), Vec::new())
        } else {
            (String::new(), filters.clone())
        };
        // Named, so that a single filter subject is part of the create's API subject, where
        // per-tenant permissions can allow it.
        let name = format!("cqrs-read-{}", Uuid::now_v7().simple());
        let create = [
            api::consumer_create(self.inner.stream_name(), &name, &filter_subject),
            format!(
                "$JS.API.CONSUMER.CREATE.{}.{name}",
                self.inner.stream_name()
            ),
        ];
        let config = pull::OrderedConfig {
            name: Some(name),
            filter_subject,
            filter_subjects,
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        };
        let consumer = self
            .inner
            .guarded(OP, &all, &create, stream.create_consumer(config))
            .await?
            .map_err(|e| unavailable_because(OP, "creating the consumer", e))?;
        let Some(reader) = ToHead::open(OP, stream, filters, head, consumer).await? else {
            return Ok(fstream::empty().boxed());
        };
        let inner = Arc::clone(&self.inner);
        let filter = filter.clone();
        let events = fstream::try_unfold(reader, move |mut reader| {
            let inner = Arc::clone(&inner);
            let filter = filter.clone();
            async move {
                while let Some(stored) = reader.next().await? {
                    let event = headers::decode(&inner.subjects, &stored)?;
                    if filter.matches(&event) {
                        return Ok(Some((event, reader)));
                    }
                }
                Ok(None)
            }
        });
        Ok(events.boxed())
    }
}
