//! The connection to the Redis that replicas share (limits, usage, admin-created keys).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A connection that is made lazily, so the gateway starts (and fails open) while Redis is
/// down, and remade after a failure. Callers bound each call by `timeout` themselves; the
/// connection's own deadline is looser (at least a second), so that a short stall does not
/// tear it down: commands already sent then still run, in order (a release after the
/// reservation it undoes), instead of being lost with the connection.
pub fn connect(url: &str, timeout: Duration) -> Result<ConnectionManager, String> {
    let client = redis::Client::open(url).map_err(|e| format!("invalid Redis URL: {e}"))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout.max(Duration::from_secs(1))))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config)
        .map_err(|e| format!("cannot prepare the Redis connection: {e}"))
}
