//! Logging: human or JSON lines on stderr through a non-blocking writer, so a
//! slow terminal or log pipe never stalls a request.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

use crate::config::{Log, LogFormat};

/// Installs the global subscriber; keep the guard alive until exit so the last
/// lines are flushed. `RUST_LOG` overrides the configured level.
pub fn init(log: &Log) -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Human => builder.with_ansi(false).init(),
    }
    guard
}
