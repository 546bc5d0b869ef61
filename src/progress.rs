//! Progress for long work: a bar in a terminal, a line per step elsewhere (notebooks, CI logs).

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

/// Reports progress over `total` steps. Quiet when `enabled` is false.
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: usize,
    done: usize,
    enabled: bool,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    pub fn new(label: &str, total: usize, enabled: bool) -> Self {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total as u64);
            if let Ok(style) =
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(label.to_string());
            bar
        });
        Self {
            bar,
            label: label.to_string(),
            total,
            done: 0,
            enabled,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    /// Advance by `n` steps. Without a terminal, print at most one line every 2 s (and the last).
    pub fn inc(&mut self, n: usize) {
        self.done += n;
        if let Some(bar) = &self.bar {
            bar.inc(n as u64);
        } else if self.enabled
            && (self.done >= self.total || self.last_line.elapsed().as_secs_f32() > 2.0)
        {
            self.last_line = Instant::now();
            eprintln!(
                "{}: {}/{} ({:.1} s)",
                self.label,
                self.done,
                self.total,
                self.started.elapsed().as_secs_f32()
            );
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
