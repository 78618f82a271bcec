//! The names of everything a context owns on the server, in one place: the contract the CLI
//! and foreign clients read along with the subjects ([`crate::subject`]) and the event's wire
//! format ([`crate::headers`]).
//!
//! | Resource | Name | Holds |
//! |---|---|---|
//! | stream | `EVENTS_<CONTEXT>` | the events, `<context>.events.>`, and read guards' carriers, `<context>.guards.*` |
//! | KV bucket | `SNAPSHOTS_<CONTEXT>` | snapshots, keys `<tenant>.<AggregateType>.<id>` |
//! | KV bucket | `PROJECTION_CHECKPOINTS_<CONTEXT>` | projection checkpoints, `<projection>.<partition>`, and live versions |
//! | KV bucket | `PROJECTION_WORKERS_<CONTEXT>` | projection workers' heartbeats |
//! | KV bucket | `KEYS_<CONTEXT>` | data subjects' keys of crypto-shredding, `<subject token>` |
//! | KV bucket | `SCHEMAS_<CONTEXT>` | JSON Schemas of event bodies, `<type token>.<version>` |
//! | stream | `DEADLETTER_<CONTEXT>` | parked events |
//! | stream | `DEADLINES_<CONTEXT>` | scheduled commands, `<context>.deadlines.>` |
//! | consumer | `cqrs-deadline-workers` | the durable consumer of the deadline workers |
//! | micro service | `cqrs-<context>` | the command service (NATS service protocol), one endpoint per aggregate type |
//! | queue group | `cqrs-<context>-<AggregateType>` | a command service's instances |
//! | queue group | `cqrs-<context>-reads` | the tenant read service's instances |
//!
//! `<CONTEXT>` is the context name in upper case (context names are ASCII). A KV bucket `B` is
//! the stream `KV_B`.

/// `EVENTS_`: the prefix of every context's events stream.
pub const EVENTS_STREAM_PREFIX: &str = "EVENTS_";

/// The events stream of `context`: `EVENTS_<CONTEXT>`.
pub fn events_stream(context: &str) -> String {
    named(EVENTS_STREAM_PREFIX, context)
}

/// The snapshot bucket of `context`: `SNAPSHOTS_<CONTEXT>`.
pub fn snapshots_bucket(context: &str) -> String {
    named("SNAPSHOTS_", context)
}

/// The projection checkpoints' bucket of `context`: `PROJECTION_CHECKPOINTS_<CONTEXT>`.
pub fn checkpoints_bucket(context: &str) -> String {
    named("PROJECTION_CHECKPOINTS_", context)
}

/// The projection workers' bucket of `context`: `PROJECTION_WORKERS_<CONTEXT>`.
pub fn workers_bucket(context: &str) -> String {
    named("PROJECTION_WORKERS_", context)
}

/// The data subjects' keys of `context`: `KEYS_<CONTEXT>`.
pub fn keys_bucket(context: &str) -> String {
    named("KEYS_", context)
}

/// The event schemas of `context`: `SCHEMAS_<CONTEXT>`.
pub fn schemas_bucket(context: &str) -> String {
    named("SCHEMAS_", context)
}

/// The dead-letter stream of `context`: `DEADLETTER_<CONTEXT>`.
pub fn deadletter_stream(context: &str) -> String {
    named("DEADLETTER_", context)
}

/// The deadlines stream of `context`: `DEADLINES_<CONTEXT>`.
pub fn deadlines_stream(context: &str) -> String {
    named("DEADLINES_", context)
}

/// The durable consumer the deadline workers of a context share.
pub const DEADLINE_WORKERS: &str = "cqrs-deadline-workers";

/// The name of the command service of `context` on the NATS service protocol (`$SRV.*`).
pub fn command_service(context: &str) -> String {
    format!("cqrs-{context}")
}

/// The queue group of the command service for `aggregate_type` in `context`.
pub fn command_queue(context: &str, aggregate_type: &str) -> String {
    format!("cqrs-{context}-{aggregate_type}")
}

/// The queue group of the tenant read service of `context`.
pub fn reads_queue(context: &str) -> String {
    format!("cqrs-{context}-reads")
}

/// The stream behind KV bucket `bucket`: `KV_<bucket>`.
pub fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

fn named(prefix: &str, context: &str) -> String {
    let mut name = String::with_capacity(prefix.len() + context.len());
    name.push_str(prefix);
    name.push_str(&context.to_ascii_uppercase());
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_table() {
        assert_eq!(events_stream("sales"), "EVENTS_SALES");
        assert_eq!(snapshots_bucket("sales"), "SNAPSHOTS_SALES");
        assert_eq!(checkpoints_bucket("sales"), "PROJECTION_CHECKPOINTS_SALES");
        assert_eq!(workers_bucket("sales"), "PROJECTION_WORKERS_SALES");
        assert_eq!(deadletter_stream("sales"), "DEADLETTER_SALES");
        assert_eq!(keys_bucket("sales"), "KEYS_SALES");
        assert_eq!(schemas_bucket("sales"), "SCHEMAS_SALES");
        assert_eq!(deadlines_stream("sales"), "DEADLINES_SALES");
        assert_eq!(kv_stream("SNAPSHOTS_SALES"), "KV_SNAPSHOTS_SALES");
        assert_eq!(command_queue("sales", "Order"), "cqrs-sales-Order");
        assert_eq!(command_service("sales"), "cqrs-sales");
        assert_eq!(reads_queue("sales"), "cqrs-sales-reads");
    }
}
