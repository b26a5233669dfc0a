//! A progress bar that appears only for operations lasting over a second.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::Mutex;
use std::time::Instant;

pub struct Bar {
    start: Instant,
    bar: Mutex<Option<ProgressBar>>,
    what: &'static str,
}

impl Bar {
    pub fn new(what: &'static str) -> Self {
        Bar { start: Instant::now(), bar: Mutex::new(None), what }
    }

    pub fn update(&self, phase: &str, done: u64, total: u64) {
        if self.start.elapsed().as_secs_f64() < 1.0 {
            return;
        }
        let Ok(mut g) = self.bar.lock() else { return };
        let b = g.get_or_insert_with(|| {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{prefix} {msg:8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b.set_prefix(self.what);
            b
        });
        b.set_length(total.max(1));
        b.set_message(phase.to_string());
        b.set_position(done);
    }

    pub fn finish(&self) {
        if let Ok(mut g) = self.bar.lock() {
            if let Some(b) = g.take() {
                b.finish_and_clear();
            }
        }
    }
}
