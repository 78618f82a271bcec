//! Which partitions a worker owns, decided from what the workers' bucket has shown it: a pure
//! type, so that the rules (and races such as a joining worker that has not yet seen the others)
//! are tested without a server.
//!
//! Partition `k` belongs to the `k mod n`-th of the `n` live workers in id order (ids are UUID
//! v7, so the oldest worker comes first). A worker is live while its last heartbeat is within its
//! time-to-live of this worker's own latest heartbeat: both are the server's timestamps, so no
//! two machines' clocks are compared. Until the watch has delivered the announcements that were
//! there when it started, the other workers are unknown and the worker owns nothing: an
//! assignment made then would take their partitions and, a moment later, give them back.

use std::collections::BTreeMap;
use std::time::Duration;
use time::OffsetDateTime;

/// The workers of one projection as one worker sees them.
#[derive(Debug, Clone)]
pub(super) struct Roster {
    me: String,
    /// Whether the announcements present when the watch started have all been seen.
    caught_up: bool,
    /// Worker id -> (server time of its last heartbeat, its time-to-live).
    members: BTreeMap<String, (OffsetDateTime, Duration)>,
}

impl Roster {
    /// The roster of worker `me`, which has seen nothing yet.
    pub(super) fn new(me: impl Into<String>) -> Self {
        Self {
            me: me.into(),
            caught_up: false,
            members: BTreeMap::new(),
        }
    }

    /// This worker's id.
    pub(super) fn me(&self) -> &str {
        &self.me
    }

    /// A new watch starts: what the old one showed is forgotten until it is shown again.
    pub(super) fn restart(&mut self) {
        self.members.clear();
        self.caught_up = false;
    }

    /// `worker` announced itself at server time `at` with time-to-live `ttl`; `pending` is how
    /// many more entries the watch had queued behind this one when it was sent.
    pub(super) fn announced(
        &mut self,
        worker: &str,
        at: OffsetDateTime,
        ttl: Duration,
        pending: u64,
    ) {
        self.members.insert(worker.to_owned(), (at, ttl));
        self.seen(pending);
    }

    /// `worker` withdrew (stopped); `pending` as for [`Self::announced`].
    pub(super) fn withdrew(&mut self, worker: &str, pending: u64) {
        self.members.remove(worker);
        self.seen(pending);
    }

    fn seen(&mut self, pending: u64) {
        // Nothing more queued: the announcements of the time the watch began are in (there is
        // at least one, this worker's own, put before the watch started).
        self.caught_up |= pending == 0;
    }

    /// Whether the other workers are known.
    pub(super) fn caught_up(&self) -> bool {
        self.caught_up
    }

    /// The live workers in id order (this one always among them).
    pub(super) fn live(&self) -> Vec<&str> {
        let now = self.members.get(&self.me).map(|(at, _)| *at);
        let mut alive: Vec<&str> = self
            .members
            .iter()
            .filter(|(worker, (at, ttl))| {
                *worker == &self.me || now.is_none_or(|now| now - *at <= *ttl)
            })
            .map(|(worker, _)| worker.as_str())
            .collect();
        if !alive.contains(&self.me.as_str()) {
            alive.push(&self.me);
            alive.sort_unstable();
        }
        alive
    }

    /// The partitions (of `partitions`) this worker owns now.
    pub(super) fn assignment(&self, partitions: u32) -> Vec<u32> {
        let alive = self.live();
        let index = alive.iter().position(|w| *w == self.me).unwrap_or(0);
        let workers = u32::try_from(alive.len()).unwrap_or(u32::MAX).max(1);
        (0..partitions)
            .filter(|k| (k % workers) as usize == index)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn at(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(seconds)
    }

    /// The rosters of `workers` after each saw every announcement, all made at `now`.
    fn settled(workers: &[&str], now: i64) -> Vec<Roster> {
        workers
            .iter()
            .map(|me| {
                let mut roster = Roster::new(*me);
                for (i, w) in workers.iter().enumerate() {
                    let pending = (workers.len() - 1 - i) as u64;
                    roster.announced(w, at(now), TTL, pending);
                }
                roster
            })
            .collect()
    }

    #[test]
    fn alone_a_worker_owns_every_partition() {
        let roster = &settled(&["a"], 0)[0];
        assert!(roster.caught_up());
        assert_eq!(roster.assignment(8), (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn live_workers_split_the_partitions_without_overlap_or_gap() {
        for n in 1..=5 {
            let ids: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            for partitions in [1, 3, 8, 16] {
                let mut owners = vec![0; partitions as usize];
                for roster in settled(&ids, 100) {
                    for p in roster.assignment(partitions) {
                        owners[p as usize] += 1;
                    }
                }
                assert!(
                    owners.iter().all(|&o| o == 1),
                    "n={n} p={partitions}: {owners:?}"
                );
            }
        }
    }

    #[test]
    fn a_worker_past_its_ttl_counts_as_gone_by_the_servers_clock() {
        let mut roster = Roster::new("b");
        roster.announced("a", at(0), TTL, 1);
        roster.announced("b", at(11), TTL, 0);
        assert_eq!(roster.live(), ["b"]);
        assert_eq!(roster.assignment(4), [0, 1, 2, 3]);
        // Within the ttl it still counts: `a` is first in id order.
        roster.announced("a", at(5), TTL, 0);
        assert_eq!(roster.live(), ["a", "b"]);
        assert_eq!(roster.assignment(4), [1, 3]);
    }

    #[test]
    fn a_joining_worker_owns_nothing_before_it_has_seen_the_others() {
        // Its own heartbeat arrives first, two older announcements are still queued behind it.
        let mut joiner = Roster::new("c");
        joiner.announced("c", at(10), TTL, 2);
        assert!(!joiner.caught_up(), "the supervisor must not assign yet");
        joiner.announced("a", at(9), TTL, 1);
        assert!(!joiner.caught_up());
        joiner.announced("b", at(9), TTL, 0);
        assert!(joiner.caught_up());
        assert_eq!(joiner.assignment(6), [2, 5]);
        // The others then see it and give up exactly its partitions.
        let mut first = settled(&["a", "b"], 9).remove(0);
        assert_eq!(first.assignment(6), [0, 2, 4]);
        first.announced("c", at(10), TTL, 0);
        assert_eq!(first.assignment(6), [0, 3]);
    }

    #[test]
    fn a_withdrawn_worker_hands_its_partitions_back_and_a_new_watch_starts_over() {
        let mut roster = settled(&["a", "b"], 0).remove(1);
        assert_eq!(roster.assignment(4), [1, 3]);
        roster.withdrew("a", 0);
        assert_eq!(roster.assignment(4), [0, 1, 2, 3]);
        roster.restart();
        assert!(!roster.caught_up());
        assert_eq!(roster.live(), ["b"]);
        assert_eq!(roster.me(), "b");
    }
}
