//! Human-readable views of the documents, and the `--json` switch.

use super::model::{
    CatalogDoc, CliError, CommandNode, EventDoc, HistoryDoc, ImportDoc, ProjectionsDoc, ReplayDoc,
    StatsDoc, StreamsDoc, SwitchOutcome, SwitchOverDoc, TraceDoc,
};
use serde::Serialize;
use std::fmt::Write as _;
use time::format_description::well_known::Rfc3339;

/// `doc` as pretty JSON (with `--json`) or through `human`; always ends with a newline.
pub(crate) fn render<T: Serialize>(
    json: bool,
    doc: &T,
    human: fn(&T) -> String,
) -> Result<String, CliError> {
    if json {
        let mut text = serde_json::to_string_pretty(doc)?;
        text.push('\n');
        Ok(text)
    } else {
        Ok(human(doc))
    }
}

fn opt<T: ToString>(value: Option<&T>) -> String {
    value.map_or_else(|| "-".to_owned(), ToString::to_string)
}

/// `recorded_at` in UTC with microseconds, fixed width so that columns align.
fn time(event: &EventDoc) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    let at = event.recorded_at.to_offset(time::UtcOffset::UTC);
    at.format(FORMAT)
        .or_else(|_| at.format(&Rfc3339))
        .unwrap_or_else(|_| at.to_string())
}

/// A table: the header and rows, columns padded to their widest cell; the last column unpadded.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: &mut dyn Iterator<Item = &str>, out: &mut String| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let _ = write!(
                text,
                "{cell:<width$}",
                width = widths.get(i).copied().unwrap_or(0)
            );
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied(), &mut out);
    for row in rows {
        line(&mut row.iter().map(String::as_str), &mut out);
    }
    out
}

/// `history`: a header line, then per event a summary line and its metadata and body.
pub(crate) fn history(doc: &HistoryDoc) -> String {
    let mut out = format!(
        "{}/{} (context {}, tenant {}): {} event{}\n",
        doc.aggregate_type,
        doc.aggregate_id,
        doc.context,
        opt(doc.tenant.as_ref()),
        doc.events.len(),
        if doc.events.len() == 1 { "" } else { "s" }
    );
    for event in &doc.events {
        let _ = writeln!(
            out,
            "\nv{:<4} pos {:<6} {} {} (schema v{})",
            event.version,
            event.position,
            time(event),
            event.event_type,
            event.schema_version
        );
        let _ = writeln!(out, "  event_id     {}", event.event_id);
        let _ = writeln!(out, "  correlation  {}", event.correlation_id);
        let _ = writeln!(out, "  causation    {}", opt(event.causation_id.as_ref()));
        let _ = writeln!(out, "  command      {}", opt(event.command_id.as_ref()));
        if let Some(cause) = event.command_causation_id {
            let _ = writeln!(out, "  caused by    {cause}");
        }
        let _ = writeln!(out, "  actor        {}", opt(event.actor.as_ref()));
        if let Some(trace) = &event.trace {
            let _ = writeln!(out, "  trace        {trace}");
        }
        for (key, value) in &event.extra {
            let _ = writeln!(out, "  {key:<12} {value}");
        }
        let _ = writeln!(out, "  body         {}", event.body);
    }
    out
}

/// `trace`: the tree, commands and events alternating, indented with tree branches.
pub(crate) fn trace(doc: &TraceDoc) -> String {
    let commands = count_commands(&doc.roots);
    let mut out = format!(
        "flow {} (context {}): {} event{}, {} command{}\n",
        doc.correlation_id,
        doc.context,
        doc.events,
        if doc.events == 1 { "" } else { "s" },
        commands,
        if commands == 1 { "" } else { "s" }
    );
    for (i, root) in doc.roots.iter().enumerate() {
        command_lines(root, "", i + 1 == doc.roots.len(), &mut out);
    }
    out
}

fn count_commands(nodes: &[CommandNode]) -> usize {
    nodes
        .iter()
        .map(|c| {
            usize::from(c.command_id.is_some())
                + c.events
                    .iter()
                    .map(|e| count_commands(&e.commands))
                    .sum::<usize>()
        })
        .sum()
}

fn command_lines(node: &CommandNode, prefix: &str, last: bool, out: &mut String) {
    let (branch, next) = if last {
        ("└─ ", "   ")
    } else {
        ("├─ ", "│  ")
    };
    let label = node
        .command_id
        .map_or_else(|| "(no command)".to_owned(), |id| format!("command {id}"));
    let actor = node
        .actor
        .as_ref()
        .map(|a| format!(" by {a}"))
        .unwrap_or_default();
    let _ = writeln!(out, "{prefix}{branch}{label}{actor}");
    let inner = format!("{prefix}{next}");
    for (i, event) in node.events.iter().enumerate() {
        let last_event = i + 1 == node.events.len();
        let (branch, next) = if last_event {
            ("└─ ", "   ")
        } else {
            ("├─ ", "│  ")
        };
        let e = &event.event;
        let tenant = e
            .tenant
            .as_ref()
            .map(|t| format!(" tenant {t}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{inner}{branch}{} {}/{} v{} pos {} {}{tenant}  [{}]",
            e.event_type,
            e.aggregate_type,
            e.aggregate_id,
            e.version,
            e.position,
            time(e),
            e.event_id
        );
        let deeper = format!("{inner}{next}");
        for (j, command) in event.commands.iter().enumerate() {
            command_lines(command, &deeper, j + 1 == event.commands.len(), out);
        }
    }
}

/// `tail`: prints one event as a line (or a JSON line) and flushes.
pub(crate) fn tail_line(json: bool, event: &EventDoc) -> Result<(), CliError> {
    use std::io::Write as _;
    let line = if json {
        serde_json::to_string(event)?
    } else {
        format!(
            "{} pos {:<6} {}/{} v{} {} (v{}) tenant {} correlation {} {}",
            time(event),
            event.position,
            event.aggregate_type,
            event.aggregate_id,
            event.version,
            event.event_type,
            event.schema_version,
            opt(event.tenant.as_ref()),
            event.correlation_id,
            event.body
        )
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(CliError::Output)
}

/// `streams`: one row per context.
pub(crate) fn streams(doc: &StreamsDoc) -> String {
    if doc.contexts.is_empty() {
        return "no contexts (streams named EVENTS_*)\n".to_owned();
    }
    let rows: Vec<Vec<String>> = doc
        .contexts
        .iter()
        .map(|c| {
            vec![
                c.context.clone(),
                c.stream.clone(),
                c.events.to_string(),
                c.aggregates.to_string(),
                format!("{}..{}", c.first_position, c.last_position),
                c.consumers.to_string(),
                c.bytes.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "CONTEXT",
            "STREAM",
            "EVENTS",
            "AGGREGATES",
            "POSITIONS",
            "CONSUMERS",
            "BYTES",
        ],
        &rows,
    )
}

/// `stats`: a header line and one row per bucket.
pub(crate) fn import(doc: &ImportDoc) -> String {
    format!(
        "context {}: {} event{} imported, {} already there, {} lines not aggregate events\n",
        doc.context,
        doc.imported,
        if doc.imported == 1 { "" } else { "s" },
        doc.skipped,
        doc.ignored
    )
}

pub(crate) fn stats(doc: &StatsDoc) -> String {
    let mut out = format!(
        "context {}: {} event{} by {}\n",
        doc.context,
        doc.total,
        if doc.total == 1 { "" } else { "s" },
        doc.by
    );
    let rows: Vec<Vec<String>> = doc
        .buckets
        .iter()
        .map(|b| vec![b.key.clone(), b.count.to_string()])
        .collect();
    out.push_str(&table(&[&doc.by.to_uppercase(), "COUNT"], &rows));
    out
}

/// `projections`: a header line and one row per projection.
pub(crate) fn projections(doc: &ProjectionsDoc) -> String {
    let mut out = format!(
        "context {} (stream {}, head {}): {} projection{}\n",
        doc.context,
        doc.stream,
        doc.head,
        doc.projections.len(),
        if doc.projections.len() == 1 { "" } else { "s" }
    );
    let dash = |shown: bool, value: String| if shown { value } else { "-".to_owned() };
    let rows: Vec<Vec<String>> = doc
        .projections
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                match p.live {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "-",
                }
                .to_owned(),
                dash(p.checkpoints, p.partitions.to_string()),
                p.workers.to_string(),
                dash(p.checkpoints, p.lag.to_string()),
                dash(p.checkpoints, p.position.to_string()),
                p.parked.to_string(),
                if p.checkpoints { "" } else { "(no checkpoint)" }.to_owned(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "PROJECTION",
            "LIVE",
            "PARTITIONS",
            "WORKERS",
            "LAG",
            "POSITION",
            "PARKED",
            "",
        ],
        &rows,
    ));
    out
}

/// `replay`: one line saying what was done.
pub(crate) fn replay(doc: &ReplayDoc) -> String {
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let workers = match doc.workers {
        0 => "no live worker: the events are processed again when one starts".to_owned(),
        n => format!(
            "{n} live worker{} process{} the events again",
            plural(n),
            if n == 1 { "es" } else { "" }
        ),
    };
    format!(
        "projection {} (context {}): {} partition{} reset to {}; {workers}\n",
        doc.projection,
        doc.context,
        doc.partitions_reset,
        plural(doc.partitions_reset),
        doc.from.describe(),
    )
}

/// `switch-over`: one line saying what was done (a refusal prints nothing on stdout: see
/// [`switch_over_refusal`]).
pub(crate) fn switch_over(doc: &SwitchOverDoc) -> String {
    match doc.outcome {
        SwitchOutcome::Switched {
            from,
            checkpoints_removed,
        } => format!(
            "projection {} (context {}): version {} is live now, switched from version {from} \
             (its runners stopped; {checkpoints_removed} checkpoint{} removed)\n",
            doc.projection,
            doc.context,
            doc.to,
            if checkpoints_removed == 1 { "" } else { "s" },
        ),
        SwitchOutcome::NotCaughtUp { .. } | SwitchOutcome::AlreadyLive { .. } => String::new(),
    }
}

/// Why `switch-over` refused, if it did (one line for stderr).
pub(crate) fn switch_over_refusal(doc: &SwitchOverDoc) -> Option<String> {
    let plural = |n: u64| if n == 1 { "" } else { "s" };
    let what = format!(
        "projection `{}` (context `{}`) not switched to version {}",
        doc.projection, doc.context, doc.to
    );
    match doc.outcome {
        SwitchOutcome::Switched { .. } => None,
        SwitchOutcome::AlreadyLive { live } => {
            Some(format!("{what}: version {live} is live already"))
        }
        SwitchOutcome::NotCaughtUp {
            lag,
            partitions_without_checkpoint,
            switch_under_way,
        } => Some(format!(
            "{what}: it has not caught up ({lag} event{} behind the head, {} partition{} \
             without a checkpoint); {}",
            plural(lag),
            partitions_without_checkpoint,
            plural(partitions_without_checkpoint as u64),
            if switch_under_way {
                "the switch is under way: the live version's runners stopped and readers still \
                 read it; run switch-over again once it has caught up"
            } else {
                "nothing changed: run it until its lag is 0, then switch again"
            }
        )),
    }
}

/// What `catalog` prints when nothing is registered (in the `--context` given).
pub(crate) fn nothing_registered(context: Option<&str>) -> String {
    if let Some(context) = context {
        return format!("no event types registered in context {context}\n");
    }
    "no event types registered in this binary.\n\n\
     It knows no domain types (the stock `cqrs` binary registers none). To list your event types\n\
     here, and draw your aggregates' state machines with `diagram`, build an operator binary that\n\
     registers them, with the `cli` feature of cqrs-nats:\n\n    \
     fn main() -> std::process::ExitCode {\n        \
     cqrs_cli::Cli::new()\n            \
     .aggregate_in::<Order>(\"sales\")   // its events come with it\n            \
     .events::<PaymentEvent>()         // an event enum of its own\n            \
     .run()\n    \
     }\n"
    .to_owned()
}

/// `catalog`: the aggregates, then one row per event type.
pub(crate) fn catalog(doc: &CatalogDoc) -> String {
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let mut out = format!(
        "{}, {}\n",
        plural(doc.aggregates.len(), "aggregate"),
        plural(doc.events.len(), "event type")
    );
    let dash = |value: Option<&str>| value.unwrap_or("-").to_owned();
    if !doc.aggregates.is_empty() {
        let rows: Vec<Vec<String>> = doc
            .aggregates
            .iter()
            .map(|a| {
                vec![
                    a.aggregate_type.to_owned(),
                    dash(a.context.as_deref()),
                    if a.state_machine { "yes" } else { "no" }.to_owned(),
                    a.event_enum.to_owned(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &["AGGREGATE", "CONTEXT", "STATE MACHINE", "EVENT ENUM"],
            &rows,
        ));
    }
    let rows: Vec<Vec<String>> = doc
        .events
        .iter()
        .map(|e| {
            vec![
                dash(e.context.as_deref()),
                dash(e.aggregate_type),
                e.event_type.to_owned(),
                format!("v{}", e.version),
                if e.upcasts_from.is_empty() {
                    "-".to_owned()
                } else {
                    e.upcasts_from
                        .iter()
                        .map(|v| format!("v{v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        &[
            "CONTEXT",
            "AGGREGATE",
            "EVENT TYPE",
            "VERSION",
            "UPCASTS FROM",
        ],
        &rows,
    ));
    out
}

/// `health`: one line per check, `ok` or `FAIL`.
pub(crate) fn health(doc: &super::model::HealthDoc) -> String {
    let mut out = format!(
        "context {}: {}\n",
        doc.context,
        if doc.healthy { "healthy" } else { "UNHEALTHY" }
    );
    for check in &doc.checks {
        let _ = writeln!(
            out,
            "  {:<4} {:<24} {}",
            if check.ok { "ok" } else { "FAIL" },
            check.check,
            check.detail
        );
    }
    out
}
