//! Progress bars (indicatif) for the long commands: scanning the table, replaying, moving
//! dead letters. Drawn on stderr, and only when both stdout and stderr are terminals, so
//! piped output (`--json | jq`, tests, CI logs) never holds bar frames.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

fn interactive() -> bool {
    std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}

fn shown(bar: ProgressBar) -> ProgressBar {
    if interactive() {
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.enable_steady_tick(Duration::from_millis(120));
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

/// A bar over `len` items (an estimate is fine: the bar grows when passed).
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    shown(bar)
}

/// A counter for work of unknown size (a table scan).
pub fn counter(what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}: {pos} ({elapsed})") {
        bar.set_style(style);
    }
    bar.set_message(what.to_owned());
    shown(bar)
}

/// Grows the bar's length when more came than estimated (SQS counts are approximate).
pub fn advance(bar: &ProgressBar) {
    if bar.length().is_some_and(|len| bar.position() >= len) {
        bar.inc_length(1);
    }
    bar.inc(1);
}
