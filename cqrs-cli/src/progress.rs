//! Progress of long reads, on stderr only.
//!
//! On a terminal the line is rewritten in place at most five times a second, once the read has
//! taken longer than that, and cleared at the end. With `--progress` it is shown even when
//! stderr is not a terminal — as lines, at most one a second — starting with a line at 0 and
//! ending with the final count, so that logs and tests see it.

use std::io::{IsTerminal as _, Write};
use std::time::{Duration, Instant};

/// How the progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    /// Not at all.
    Off,
    /// One line on a terminal, rewritten in place.
    InPlace,
    /// One line per update (stderr is a pipe or a file).
    Lines,
}

impl Style {
    fn interval(self) -> Duration {
        match self {
            Self::InPlace => Duration::from_millis(200),
            Self::Off | Self::Lines => Duration::from_secs(1),
        }
    }
}

/// The progress of one read of `total` events (if known).
pub(crate) struct Progress {
    label: String,
    verb: &'static str,
    total: Option<u64>,
    done: u64,
    style: Style,
    forced: bool,
    started: Instant,
    next: Instant,
    shown: bool,
    finished: bool,
    out: Box<dyn Write + Send>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("label", &self.label)
            .field("done", &self.done)
            .field("total", &self.total)
            .field("style", &self.style)
            .finish_non_exhaustive()
    }
}

impl Progress {
    /// Progress on stderr: shown if it is a terminal, or (as lines) if `forced`.
    pub(crate) fn stderr(
        label: impl Into<String>,
        verb: &'static str,
        total: Option<u64>,
        forced: bool,
    ) -> Self {
        let style = if std::io::stderr().is_terminal() {
            Style::InPlace
        } else if forced {
            Style::Lines
        } else {
            Style::Off
        };
        Self::new(
            label.into(),
            verb,
            total,
            style,
            forced,
            Box::new(std::io::stderr()),
            Instant::now(),
        )
    }

    /// Whether anything will be shown (callers skip work that only feeds the display).
    pub(crate) fn wanted(forced: bool) -> bool {
        forced || std::io::stderr().is_terminal()
    }

    fn new(
        label: String,
        verb: &'static str,
        total: Option<u64>,
        style: Style,
        forced: bool,
        out: Box<dyn Write + Send>,
        now: Instant,
    ) -> Self {
        let mut progress = Self {
            label,
            verb,
            total,
            done: 0,
            style,
            forced,
            started: now,
            next: now + style.interval(),
            shown: false,
            finished: false,
            out,
        };
        if forced && style != Style::Off {
            progress.show(false);
        }
        progress
    }

    /// One more event read.
    pub(crate) fn tick(&mut self) {
        self.done += 1;
        if self.style != Style::Off {
            self.tick_at(Instant::now());
        }
    }

    fn tick_at(&mut self, now: Instant) {
        if now >= self.next {
            self.next = now + self.style.interval();
            self.show(false);
        }
    }

    /// The read is complete: the final count with `--progress`, else the line is cleared.
    pub(crate) fn finish(mut self) {
        self.finish_at(Instant::now());
    }

    fn finish_at(&mut self, now: Instant) {
        self.finished = true;
        if self.style == Style::Off {
            return;
        }
        if self.forced {
            let elapsed = now.saturating_duration_since(self.started);
            let line = format!("{}, done in {:.1}s", self.line(), elapsed.as_secs_f64());
            self.write(&line, true);
        } else {
            self.clear();
        }
    }

    /// `EVENTS_BANK: scanned 40,000 / 100,000 events (40%)`.
    fn line(&self) -> String {
        match self.total {
            Some(total) => {
                let total = total.max(self.done);
                let percent = (self.done.saturating_mul(100) / total.max(1)).min(100);
                let percent = if total == 0 { 100 } else { percent };
                format!(
                    "{}: {} {} / {} events ({percent}%)",
                    self.label,
                    self.verb,
                    thousands(self.done),
                    thousands(total)
                )
            }
            None => format!(
                "{}: {} {} events",
                self.label,
                self.verb,
                thousands(self.done)
            ),
        }
    }

    fn show(&mut self, last: bool) {
        let line = self.line();
        self.write(&line, last);
    }

    fn write(&mut self, line: &str, last: bool) {
        // Progress is best effort: a closed stderr must not fail the command.
        let _ = match self.style {
            Style::Off => Ok(()),
            Style::InPlace if last => write!(self.out, "\r\x1b[2K{line}\n"),
            Style::InPlace => write!(self.out, "\r\x1b[2K{line}"),
            Style::Lines => writeln!(self.out, "{line}"),
        };
        let _ = self.out.flush();
        self.shown = !last;
    }

    fn clear(&mut self) {
        if self.shown && self.style == Style::InPlace {
            let _ = write!(self.out, "\r\x1b[2K");
            let _ = self.out.flush();
            self.shown = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if !self.finished {
            // An error ended the read: leave the terminal line clean for the error message.
            self.clear();
        }
    }
}

/// `40000` as `40,000`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn run(style: Style, forced: bool, total: Option<u64>, ticks: &[(u64, u64)]) -> String {
        let out = Shared::default();
        let start = Instant::now();
        let mut progress = Progress::new(
            "EVENTS_X".into(),
            "scanned",
            total,
            style,
            forced,
            Box::new(out.clone()),
            start,
        );
        // (events read, milliseconds since the start)
        for &(events, at) in ticks {
            while progress.done < events {
                progress.done += 1;
                progress.tick_at(start + Duration::from_millis(at));
            }
        }
        progress.finish_at(start + Duration::from_millis(2_500));
        drop(progress);
        out.text()
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(40_000), "40,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn forced_lines_start_at_zero_are_throttled_and_end_with_the_count() {
        let text = run(
            Style::Lines,
            true,
            Some(100_000),
            &[
                (40_000, 100),
                (50_000, 1_000),
                (60_000, 1_500),
                (100_000, 2_100),
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "EVENTS_X: scanned 0 / 100,000 events (0%)",
                // 40,000 at 100 ms: too soon; the first update comes at 1 s.
                "EVENTS_X: scanned 40,001 / 100,000 events (40%)",
                "EVENTS_X: scanned 60,001 / 100,000 events (60%)",
                "EVENTS_X: scanned 100,000 / 100,000 events (100%), done in 2.5s",
            ],
            "{text}"
        );
    }

    #[test]
    fn an_unknown_or_exceeded_total_still_reads_well() {
        let text = run(Style::Lines, true, None, &[(3, 0)]);
        assert!(
            text.ends_with("EVENTS_X: scanned 3 events, done in 2.5s\n"),
            "{text}"
        );
        let text = run(Style::Lines, true, Some(2), &[(3, 0)]);
        assert!(text.contains("scanned 3 / 3 events (100%)"), "{text}");
        let text = run(Style::Lines, true, Some(0), &[]);
        assert!(text.contains("scanned 0 / 0 events (100%)"), "{text}");
    }

    #[test]
    fn a_terminal_line_is_rewritten_and_cleared_unless_forced() {
        let text = run(Style::InPlace, false, Some(10), &[(5, 100), (10, 300)]);
        assert_eq!(
            text,
            "\r\x1b[2KEVENTS_X: scanned 6 / 10 events (60%)\r\x1b[2K"
        );
        let text = run(Style::InPlace, true, Some(10), &[(10, 100)]);
        assert!(
            text.starts_with("\r\x1b[2KEVENTS_X: scanned 0 / 10"),
            "{text:?}"
        );
        assert!(text.ends_with("(100%), done in 2.5s\n"), "{text:?}");
    }

    #[test]
    fn nothing_is_shown_when_off() {
        assert_eq!(run(Style::Off, false, Some(10), &[(10, 5_000)]), "");
    }
}
