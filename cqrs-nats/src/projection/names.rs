//! The name of the projection workers' bucket, and the filter subjects that narrow a
//! projection on the server.

use crate::subject::Subjects;
use cqrs_core::EventFilter;

/// Most filter subjects one consumer gets; wider filters filter on the client.
pub(super) const MAX_FILTER_SUBJECTS: usize = 64;

/// The consumer filter subjects that narrow `filter` on the server (the runner applies the whole
/// filter anyway): never empty, `<context>.events.>` at the widest, so that no reader sees
/// the stream's other messages (read guards' carriers).
pub(crate) fn filter_subjects(subjects: &Subjects, filter: &EventFilter) -> Vec<String> {
    let narrowed = filter_subjects_in(subjects, filter, None);
    if narrowed.is_empty() {
        vec![subjects.all_events()]
    } else {
        narrowed
    }
}

/// [`filter_subjects`] within one partition (`Some`): never empty then, the partition's
/// subjects at the widest.
pub(crate) fn filter_subjects_in(
    subjects: &Subjects,
    filter: &EventFilter,
    partition: Option<u32>,
) -> Vec<String> {
    let whole = || {
        partition
            .map(|k| subjects.partition_filter(k))
            .into_iter()
            .collect()
    };
    let mut types: Vec<Option<&str>> = filter
        .aggregate_types
        .iter()
        .map(|t| Some(t.as_str()))
        .collect();
    let mut tenants: Vec<Option<Option<&str>>> = filter
        .tenants
        .iter()
        .map(|t| Some(Some(t.as_str())))
        .collect();
    types.sort_unstable();
    types.dedup();
    tenants.sort_unstable();
    tenants.dedup();
    if types.is_empty() && tenants.is_empty() {
        return whole();
    }
    if types.is_empty() {
        types.push(None);
    }
    if tenants.is_empty() {
        tenants.push(None);
    }
    if types.len() * tenants.len() > MAX_FILTER_SUBJECTS {
        return whole();
    }
    let mut out = Vec::with_capacity(types.len() * tenants.len());
    for tenant in &tenants {
        for aggregate_type in &types {
            match subjects.filter_in(partition, *tenant, *aggregate_type) {
                Ok(subject) => out.push(subject),
                // A name no subject can carry: let the client-side filter decide.
                Err(_) => return whole(),
            }
        }
    }
    out
}

pub(super) fn split_filters(mut filters: Vec<String>) -> (String, Vec<String>) {
    if filters.len() == 1 {
        (filters.pop().unwrap_or_default(), Vec::new())
    } else {
        (String::new(), filters)
    }
}

/// The KV bucket where the workers of the context's projections announce themselves:
/// `PROJECTION_WORKERS_<CONTEXT>`.
pub fn workers_bucket(subjects: &Subjects) -> String {
    crate::layout::workers_bucket(subjects.context())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_filter_reads_the_events_only() {
        let subjects = Subjects::with_partitions("bank", 4).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            filter_subjects(&subjects, &EventFilter::all()),
            ["bank.events.>"],
            "never the whole stream: read guards' carriers share it"
        );
        assert_eq!(
            filter_subjects_in(&subjects, &EventFilter::all(), Some(2)),
            ["bank.events.2.>"]
        );
        assert_eq!(
            filter_subjects(&subjects, &EventFilter::all().aggregate_type("Account")),
            ["bank.events.*.*.Account.*"]
        );
    }
}
