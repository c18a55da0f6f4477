//! Progress bars for long work (loading and writing large models, planning a sweep), drawn only on a
//! terminal.

use indicatif::{ProgressBar, ProgressStyle};

/// A byte-counting progress bar labelled with what is being done.
pub fn bytes(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:32}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// A step-counting progress bar labelled with what is being done.
pub fn steps(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template("{msg:>12} [{bar:32}] {pos}/{len} {elapsed}").expect("static template").progress_chars("=> "));
    bar.set_message(what.to_string());
    bar
}
