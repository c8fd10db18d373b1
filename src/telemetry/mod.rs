//! Telemetry: the log setup, and the traces of requests (spans built here and nowhere
//! else, exported over OTLP). Layers see only the small API of [`spans`]: a step span, an
//! attempt span, the request's trace; none of them names an OpenTelemetry type.

pub(crate) mod attributes;
mod export;
mod logging;
pub(crate) mod settings;
pub(crate) mod spans;

pub use logging::init_logging;
