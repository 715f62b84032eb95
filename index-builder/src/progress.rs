//! Progress bars (stderr, hidden when not a terminal) and the per-step timing summary a build
//! prints at the end.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Default)]
pub struct Progress {
    steps: Mutex<Vec<(String, Duration)>>,
    quiet: bool,
}

/// A running step: finishing (or dropping) it records its duration.
pub struct Step<'a> {
    progress: &'a Progress,
    name: String,
    start: Instant,
    bar: ProgressBar,
    done: bool,
}

impl Step<'_> {
    pub fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
    }
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }
    pub fn finish(mut self) {
        self.record();
    }
    fn record(&mut self) {
        if !self.done {
            self.done = true;
            self.bar.finish_and_clear();
            let d = self.start.elapsed();
            if !self.progress.quiet {
                eprintln!("  {:<48} {:>8.2}s", self.name, d.as_secs_f64());
            }
            if let Ok(mut s) = self.progress.steps.lock() {
                s.push((self.name.clone(), d));
            }
        }
    }
}

impl Drop for Step<'_> {
    fn drop(&mut self) {
        self.record();
    }
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        Self {
            steps: Mutex::new(Vec::new()),
            quiet,
        }
    }

    pub fn bar(&self, name: &str, len: u64) -> Step<'_> {
        let bar = if self.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(len)
        };
        bar.set_style(
            ProgressStyle::with_template("  {msg:<48} [{bar:30}] {pos}/{len} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(name.to_string());
        Step {
            progress: self,
            name: name.to_string(),
            start: Instant::now(),
            bar,
            done: false,
        }
    }

    pub fn spinner(&self, name: &str) -> Step<'_> {
        let bar = if self.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new_spinner()
        };
        bar.set_message(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        Step {
            progress: self,
            name: name.to_string(),
            start: Instant::now(),
            bar,
            done: false,
        }
    }

    pub fn timings(&self) -> Vec<(String, f64)> {
        self.steps
            .lock()
            .map(|s| {
                s.iter()
                    .map(|(n, d)| (n.clone(), d.as_secs_f64()))
                    .collect()
            })
            .unwrap_or_default()
    }
}
