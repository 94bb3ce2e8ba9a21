//! Logging: human or JSON lines on stderr through a non-blocking writer, so a
//! slow terminal or log pipe never stalls a request. When the pipe stops
//! taking lines and the writer's buffer is full, new lines are dropped and
//! counted (`membergate_log_lines_dropped_total`): a gateway that stopped
//! serving because nobody read its log would be down for everyone.
//!
//! The buffer is counted in lines, so its size in bytes is bounded by the
//! longest line: values a client chooses (the path, a refused form's
//! `Origin`) are cut to a length where they are logged (`respond::clip`).
//! 16,384 lines of at most a few KiB each is tens of MiB at worst; the
//! default of 128,000 lines let long paths hold gigabytes while a log
//! reader stalled.

use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::{Log, LogFormat};

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Lines waiting for the log's reader before new ones are dropped.
const BUFFERED_LINES: usize = 16_384;

/// How many log lines have been dropped since start.
pub fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |counter| counter.dropped_lines() as u64)
}

/// Installs the global subscriber; keep the guard alive until exit so the last
/// lines are flushed. `RUST_LOG` overrides the configured level.
pub fn init(log: &Log) -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(BUFFERED_LINES)
        .lossy(true)
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Human => builder.with_ansi(false).init(),
    }
    guard
}
