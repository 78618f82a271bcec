//! The metrics the framework records, through the facade of the `metrics` crate: the library
//! records, the application installs an exporter (Prometheus, OpenTelemetry, `StatsD`...) — without
//! one, recording costs next to nothing.
//!
//! | Name | Kind | Labels | What |
//! | --- | --- | --- | --- |
//! | `cqrs_commands_total` | counter | `aggregate_type`, `outcome` | commands handled by a repository; `outcome` is `committed` (a retry answered with its original events included), `unchanged` (no events decided), `rejected`, `invalid_transition`, `conflict`, `unavailable` or `error` |
//! | `cqrs_command_duration_seconds` | histogram | `aggregate_type` | time to handle a command, load and retries included |
//! | `cqrs_command_conflicts_total` | counter | `aggregate_type` | conflicts met: appends refused because another writer was first (retried or not), and commands pinned at a version the aggregate has left |
//! | `cqrs_command_retries_total` | counter | `aggregate_type` | commands decided again after a conflict |
//! | `cqrs_events_per_append` | histogram | `aggregate_type` | events written by one command |
//! | `cqrs_projection_events_total` | counter | `projection` | events a JetStream projection runner handed to its projection |
//! | `cqrs_projection_handler_duration_seconds` | histogram | `projection` | time a projection took for one batch |
//! | `cqrs_projection_lag` | gauge | `projection`, `partition` | events of the partition stored after the last one handled |
//! | `cqrs_projection_parked_total` | counter | `projection` | events parked on the dead-letter stream |
//! | `cqrs_projection_reader_restarts_total` | counter | `projection`, `reason` | partition readers made again because the stream's leader disagreed with them: `started_late` (a reader's first event came after events the leader holds for it), `stalled` (its consumer delivered nothing while the leader held an event for it) |
//! | `cqrs_command_service_requests_total` | counter | `context`, `aggregate_type`, `outcome` | requests a command service answered (`outcome`: `committed` or the reply's failure kind) |

use std::time::Duration;

/// `cqrs_commands_total`.
pub const COMMANDS: &str = "cqrs_commands_total";
/// `cqrs_command_duration_seconds`.
pub const COMMAND_DURATION: &str = "cqrs_command_duration_seconds";
/// `cqrs_command_conflicts_total`.
pub const COMMAND_CONFLICTS: &str = "cqrs_command_conflicts_total";
/// `cqrs_command_retries_total`.
pub const COMMAND_RETRIES: &str = "cqrs_command_retries_total";
/// `cqrs_events_per_append`.
pub const EVENTS_PER_APPEND: &str = "cqrs_events_per_append";
/// `cqrs_projection_events_total`.
pub const PROJECTION_EVENTS: &str = "cqrs_projection_events_total";
/// `cqrs_projection_handler_duration_seconds`.
pub const PROJECTION_HANDLER_DURATION: &str = "cqrs_projection_handler_duration_seconds";
/// `cqrs_projection_lag`.
pub const PROJECTION_LAG: &str = "cqrs_projection_lag";
/// `cqrs_projection_parked_total`.
pub const PROJECTION_PARKED: &str = "cqrs_projection_parked_total";
/// `cqrs_projection_reader_restarts_total`.
pub const PROJECTION_READER_RESTARTS: &str = "cqrs_projection_reader_restarts_total";
/// `cqrs_command_service_requests_total`.
pub const COMMAND_SERVICE_REQUESTS: &str = "cqrs_command_service_requests_total";

/// Records one command of `aggregate_type`: its outcome and how long it took.
pub(crate) fn command(aggregate_type: &'static str, outcome: &'static str, took: Duration) {
    ::metrics::counter!(COMMANDS, "aggregate_type" => aggregate_type, "outcome" => outcome)
        .increment(1);
    ::metrics::histogram!(COMMAND_DURATION, "aggregate_type" => aggregate_type)
        .record(took.as_secs_f64());
}

/// Records a conflict met by a command of `aggregate_type`, and whether it is decided again.
pub(crate) fn conflict(aggregate_type: &'static str, retried: bool) {
    ::metrics::counter!(COMMAND_CONFLICTS, "aggregate_type" => aggregate_type).increment(1);
    if retried {
        ::metrics::counter!(COMMAND_RETRIES, "aggregate_type" => aggregate_type).increment(1);
    }
}

/// Records the number of events one command of `aggregate_type` wrote.
pub(crate) fn appended(aggregate_type: &'static str, events: usize) {
    #[allow(clippy::cast_precision_loss)] // event counts are far below 2^52
    ::metrics::histogram!(EVENTS_PER_APPEND, "aggregate_type" => aggregate_type)
        .record(events as f64);
}
