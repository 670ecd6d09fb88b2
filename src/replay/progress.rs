//! Progress of the long offline runs (`replay`, `evaluate`, `tune`) on stderr: rows or
//! simulated time, rate and ETA. Drawn only when stderr is a terminal, so logs and pipes get
//! nothing.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Rows (or seconds) are handed to the bar in steps of this many: the bar costs nothing per row.
const STEP: u64 = 4096;

#[derive(Debug, Default)]
pub struct Progress {
    bar: Option<ProgressBar>,
    pending: u64,
}

impl Progress {
    /// No output.
    pub fn hidden() -> Progress {
        Progress::default()
    }

    fn bar(total: u64, template: &str, what: &str) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        Progress {
            bar: Some(bar),
            pending: 0,
        }
    }

    /// Counts rows out of `total`.
    pub fn rows(what: &str, total: u64) -> Progress {
        Progress::bar(
            total,
            "{msg} [{bar:30}] {human_pos}/{human_len} rows, {per_sec:0}, ETA {eta}",
            what,
        )
    }

    /// Counts simulated seconds out of `total_s`.
    pub fn sim_time(what: &str, total_s: u64) -> Progress {
        Progress::bar(
            total_s,
            "{msg} [{bar:30}] {human_pos}/{human_len} s simulated, {per_sec:0}, ETA {eta}",
            what,
        )
    }

    /// Counts settings (independent replays) out of `total`.
    pub fn steps(what: &str, total: u64) -> Progress {
        Progress::bar(total, "{msg} [{bar:30}] {pos}/{len}, ETA {eta}", what)
    }

    /// One more row (or second).
    pub fn row(&mut self) {
        self.add(1);
    }

    pub fn add(&mut self, n: u64) {
        if let Some(bar) = &self.bar {
            self.pending += n;
            if self.pending >= STEP {
                bar.inc(self.pending);
                self.pending = 0;
            }
        }
    }

    /// Sets the position outright (simulated time, settings done).
    pub fn set(&mut self, pos: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
        }
    }

    /// Clears the bar from the terminal.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.inc(self.pending);
            bar.finish_and_clear();
        }
    }
}
