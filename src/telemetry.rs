//! Logging setup. `RUST_LOG` filters (default `info`); `SWITCHYARD_LOG_FORMAT=json` writes
//! one JSON object per line. Access lines use the target `switchyard::access`.
//! Nothing here ever records a header value: secrets cannot reach the log.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("SWITCHYARD_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
