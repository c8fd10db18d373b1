//! Logging setup. `RUST_LOG` filters (default `info`). `SWITCHYARD_LOG_FORMAT=json` writes
//! one JSON object per line, `text` human-readable lines; unset, a terminal gets text and
//! anything else (a pipe, a container's log driver) JSON. Access lines use the target
//! `switchyard::access`.
//! Nothing here ever records a header value: secrets cannot reach the log.
//!
//! Lines are formatted on the worker that logs them and written by a background thread
//! in batches, so a request never waits on stdout and a busy gateway makes one write
//! syscall per batch instead of one per line. If stdout cannot keep up for 128k lines,
//! new lines are dropped rather than stalling requests.

use std::io::{BufWriter, IsTerminal};

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Keep the guard until exit: dropping it flushes the
/// lines still queued.
pub fn init_logging() -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stdout().is_terminal();
    let json = match std::env::var("SWITCHYARD_LOG_FORMAT") {
        Ok(format) => format == "json",
        Err(_) => !ansi,
    };
    let (writer, guard) = tracing_appender::non_blocking(BufWriter::new(std::io::stdout()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    guard
}
