//! The feedback index in the Redis replicas share (the connection of `limits.redis`).
//!
//! A served request is `<prefix>feedback:req:<id>` (its [`Served`] as JSON), written with
//! `SET … PX retention` by a task of its own, so that the request never waits for Redis;
//! its feedback is `<prefix>feedback:req:<id>:feedback`, set by one script
//! (`give.lua`) that gives it the request's remaining time to live. Every call is bounded
//! by [`TIMEOUT`]. While Redis fails, requests served are not remembered (they cannot be
//! given feedback) and feedback answers 503; a WARN is logged when that starts and when it
//! ends (with the number of failed calls), not per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use super::{Feedback, Served, Unavailable};
use crate::config::schema::RedisSettings;
use crate::shared_store;

/// Longest wait for one call to the shared index.
const TIMEOUT: Duration = Duration::from_secs(1);

pub struct RedisIndex {
    connection: ConnectionManager,
    /// `<prefix>feedback:req:`
    prefix: String,
    retention_ms: u64,
    give: Script,
    health: Arc<Health>,
}

impl RedisIndex {
    pub fn new(settings: &RedisSettings, retention: Duration) -> Result<Self, String> {
        Ok(Self {
            connection: shared_store::connect(&settings.url, TIMEOUT)?,
            prefix: format!("{}feedback:req:", settings.key_prefix),
            retention_ms: u64::try_from(retention.as_millis()).unwrap_or(u64::MAX),
            give: Script::new(include_str!("give.lua")),
            health: Arc::default(),
        })
    }

    /// Writes `served` in the background.
    pub fn remember(&self, id: &str, served: &Served) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // no runtime: the gateway is shutting down
        };
        let Ok(json) = serde_json::to_string(served) else {
            return;
        };
        let mut connection = self.connection.clone();
        let mut set = redis::cmd("SET");
        set.arg(format!("{}{id}", self.prefix))
            .arg(json)
            .arg("PX")
            .arg(self.retention_ms);
        let health = self.health.clone();
        runtime.spawn(async move {
            let written = set.query_async::<()>(&mut connection);
            let _ = health.record(tokio::time::timeout(TIMEOUT, written).await);
        });
    }

    pub async fn find(&self, id: &str) -> Result<Option<Served>, Unavailable> {
        let mut connection = self.connection.clone();
        let mut get = redis::cmd("GET");
        get.arg(format!("{}{id}", self.prefix));
        let read = get.query_async::<Option<String>>(&mut connection);
        let json = self
            .health
            .record(tokio::time::timeout(TIMEOUT, read).await)?;
        Ok(json.and_then(|json| match serde_json::from_str(&json) {
            Ok(served) => Some(served),
            Err(error) => {
                tracing::warn!(request_id = id, %error, "ignoring an unreadable request in the feedback index");
                None
            }
        }))
    }

    pub async fn give(&self, id: &str, feedback: &Feedback) -> Result<Option<bool>, Unavailable> {
        let mut connection = self.connection.clone();
        let json = serde_json::to_string(feedback).map_err(|_| Unavailable)?;
        let request = format!("{}{id}", self.prefix);
        let mut invocation = self.give.key(&request);
        invocation.key(format!("{request}:feedback")).arg(json);
        let call = invocation.invoke_async::<i64>(&mut connection);
        let answer = self
            .health
            .record(tokio::time::timeout(TIMEOUT, call).await)?;
        Ok((answer >= 0).then_some(answer == 1))
    }
}

/// Whether Redis answers, logged when that changes.
#[derive(Debug)]
struct Health {
    reachable: AtomicBool,
    /// Calls failed since Redis last answered.
    failures: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            reachable: AtomicBool::new(true),
            failures: AtomicU64::new(0),
        }
    }
}

impl Health {
    fn record<T>(
        &self,
        outcome: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, Unavailable> {
        let error = match outcome {
            Ok(Ok(value)) => {
                if !self.reachable.swap(true, Ordering::Relaxed) {
                    let failed_calls = self.failures.swap(0, Ordering::Relaxed);
                    tracing::warn!(
                        failed_calls,
                        "the feedback index (Redis) is back: served requests can be given feedback again"
                    );
                }
                return Ok(value);
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => "no answer within the timeout".to_owned(),
        };
        self.failures.fetch_add(1, Ordering::Relaxed);
        if self.reachable.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                %error,
                "the feedback index (Redis) is unavailable: requests served meanwhile cannot be given feedback, and feedback answers 503"
            );
        }
        Err(Unavailable)
    }
}
