//! What the store remembers of aggregate heads between calls.

use super::Inner;
use cqrs_core::{ExpectedVersion, RecordedEvent, StoreError};
use std::collections::HashMap;
use std::sync::PoisonError;

/// The last message of an aggregate: its stream sequence and version.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Last {
    pub(super) sequence: u64,
    pub(super) version: u64,
}

/// Recently seen heads of aggregates: "version `v` of subject `s` is at stream sequence `q`".
/// These are immutable facts, so a cached entry is never wrong, at most old: an append with
/// `Exact(v)` whose `v` is known skips the lookup of the last message and lets the server's
/// `Nats-Expected-Last-Subject-Sequence` check decide.
#[derive(Debug, Default)]
pub(super) struct KnownHeads {
    heads: HashMap<String, Last>,
}

/// How many aggregate heads the store remembers (cleared when full).
const KNOWN_HEADS: usize = 16_384;

impl KnownHeads {
    pub(super) fn get(&self, subject: &str) -> Option<Last> {
        self.heads.get(subject).copied()
    }

    fn record(&mut self, subject: &str, head: Last) {
        if let Some(known) = self.heads.get_mut(subject) {
            if head.version > known.version {
                *known = head;
            }
            return;
        }
        if self.heads.len() >= KNOWN_HEADS {
            self.heads.clear();
        }
        self.heads.insert(subject.to_owned(), head);
    }
}

impl Inner {
    pub(super) fn known(&self) -> std::sync::MutexGuard<'_, KnownHeads> {
        // The map holds only facts; a panic elsewhere cannot leave a wrong one behind.
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn remember(&self, subject: &str, event: &RecordedEvent) {
        self.known().record(
            subject,
            Last {
                sequence: event.position,
                version: event.version,
            },
        );
    }

    /// The stream sequence and version of `subject`'s last event, for an append expecting
    /// `expected`: unless `trust_known` is false (a retry), 0 for a new aggregate or the
    /// remembered head where it can serve the expectation; else a leader read.
    pub(super) async fn head(
        &self,
        subject: &str,
        expected: ExpectedVersion,
        trust_known: bool,
    ) -> Result<Last, StoreError> {
        let known = match expected {
            _ if !trust_known => None,
            ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => Some(Last::default()),
            ExpectedVersion::Exact(version) => {
                self.known().get(subject).filter(|k| k.version == version)
            }
            ExpectedVersion::Any => self.known().get(subject),
        };
        Ok(match known {
            Some(known) => known,
            None => self.last(subject).await?.map_or(Last::default(), |e| Last {
                sequence: e.position,
                version: e.version,
            }),
        })
    }
}
