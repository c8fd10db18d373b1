//! The feedback index: the requests served recently, by the gateway's request id, so that
//! a client can score one (`POST /v1/feedback`, `http/feedback.rs`).
//!
//! It is a report [`Sink`]: every chat completion or embeddings request that reached a
//! target (whatever its outcome) is remembered for `feedback.retention` with who made it
//! (key and team), its public model and the target that served it. The memory backend
//! keeps them in this process, at most `feedback.max_requests` (`memory.rs`); the Redis
//! backend in the Redis replicas share (`redis.rs`), so any replica takes feedback for a
//! request any replica served.
//!
//! A request's feedback is kept beside it and expires with it; a second feedback replaces
//! the first. What the feedback says is recorded by the handler (a log event and a metric),
//! not here.

mod memory;
mod redis;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::auth::Key;
use crate::config::schema::{FeedbackBackend, FeedbackSettings, LimitsSettings};
use crate::error::GatewayError;
use crate::report::{Report, Sink};

/// What is remembered of a served request: shared strings, so that remembering every
/// request copies no text (they are the report's own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Served {
    /// The name of the key that made it (never the key).
    pub key: Arc<str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<Arc<str>>,
    /// The public model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<Arc<str>>,
    /// `provider/upstream model` of the attempt that served it (or last tried to).
    pub target: Arc<str>,
    /// The prompt version and experiment variant it used: unset until prompts and
    /// experiments are built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_version: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<Arc<str>>,
    /// The trace it was part of, so that the feedback can be linked to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<Arc<str>>,
    /// Its server span, which the feedback's span links to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<Arc<str>>,
}

impl Served {
    /// What to remember of a finished request: nothing if it never reached a target.
    fn of(report: &Report) -> Option<Self> {
        let served_by = report.served_by.as_ref()?;
        Some(Self {
            key: report.key.clone(),
            team: report.team.clone(),
            model: report.model.clone(),
            target: served_by.target.clone(),
            prompt_version: None,
            variant: None,
            trace_id: report.trace_id.clone(),
            span_id: report.span_id.clone(),
        })
    }

    /// Whether `key` may give feedback on this request: any key of the team that made it;
    /// for a request made without a team, only the key that made it.
    pub fn scorable_by(&self, key: &Key) -> bool {
        match (&self.team, &key.team) {
            (Some(team), Some(own)) => **team == *own.name,
            (None, None) => *self.key == *key.name,
            _ => false,
        }
    }
}

/// A client's feedback on a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    /// From -1 (bad) to 1 (good).
    pub score: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// When it was given, in Unix seconds.
    pub at: u64,
}

/// The shared store did not answer.
#[derive(Debug)]
pub struct Unavailable;

impl From<Unavailable> for GatewayError {
    fn from(_: Unavailable) -> Self {
        Self::FeedbackUnavailable
    }
}

pub struct FeedbackIndex {
    backend: Backend,
}

enum Backend {
    Memory(memory::MemoryIndex),
    Redis(redis::RedisIndex),
}

impl Default for FeedbackIndex {
    fn default() -> Self {
        Self::in_memory(&FeedbackSettings::default())
    }
}

impl FeedbackIndex {
    /// The index `settings` ask for (the Redis backend on the Redis of `limits`). [restart]
    pub fn new(settings: &FeedbackSettings, limits: &LimitsSettings) -> Result<Self, String> {
        match (settings.backend(limits), &limits.redis) {
            (FeedbackBackend::Redis, Some(redis)) => Ok(Self {
                backend: Backend::Redis(redis::RedisIndex::new(redis, settings.retention)?),
            }),
            (FeedbackBackend::Redis, None) => {
                Err("feedback.backend redis needs limits.redis".to_owned())
            }
            (FeedbackBackend::Memory, _) => Ok(Self::in_memory(settings)),
        }
    }

    fn in_memory(settings: &FeedbackSettings) -> Self {
        Self {
            backend: Backend::Memory(memory::MemoryIndex::new(settings)),
        }
    }

    /// The request `id`, if it is remembered.
    pub async fn find(&self, id: &str) -> Result<Option<Served>, Unavailable> {
        match &self.backend {
            Backend::Memory(memory) => Ok(memory.find(id)),
            Backend::Redis(redis) => redis.find(id).await,
        }
    }

    /// Keeps `feedback` on the request `id`, replacing an earlier one: whether it did, or
    /// `None` if the request is not remembered (any more).
    pub async fn give(&self, id: &str, feedback: &Feedback) -> Result<Option<bool>, Unavailable> {
        match &self.backend {
            Backend::Memory(memory) => Ok(memory.give(id, feedback)),
            Backend::Redis(redis) => redis.give(id, feedback).await,
        }
    }
}

/// Remembers every request that reached a target. Never waits: the Redis write runs in
/// its own task.
impl Sink for FeedbackIndex {
    fn record(&self, report: &Report) {
        let Some(served) = Served::of(report) else {
            return;
        };
        match &self.backend {
            Backend::Memory(memory) => memory.remember(report.request_id.clone(), served),
            Backend::Redis(redis) => redis.remember(&report.request_id, &served),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth::KeyTable;
    use crate::report::{Endpoint, ServedBy, Timings};

    fn keys() -> KeyTable {
        let hash = |n: u8| format!("{n:064}");
        let config = format!(
            "auth:\n  teams: {{a: {{}}, b: {{}}}}\n  keys:\n    a1: {{sha256: {}, team: a}}\n    a2: {{sha256: {}, team: a}}\n    b1: {{sha256: {}, team: b}}\n    solo1: {{sha256: {}}}\n    solo2: {{sha256: {}}}\n",
            hash(1),
            hash(2),
            hash(3),
            hash(4),
            hash(5)
        );
        let raw = crate::config::parse(&config, |_| None).unwrap();
        KeyTable::build(&raw.auth)
    }

    fn report(key: &Key, served: bool) -> Report {
        Report {
            request_id: "req_1".into(),
            trace_id: None,
            span_id: None,
            trace_recorded: false,
            correlation_id: None,
            endpoint: Endpoint::ChatCompletions,
            status: 200,
            error: None,
            key: key.name.clone(),
            team: key.team.as_ref().map(|t| t.name.clone()),
            model: Some("m".into()),
            served_by: served.then(|| ServedBy {
                target: "p/up".into(),
                provider: "p".into(),
                provider_kind: crate::config::schema::ProviderKind::Mock,
                upstream_model: "up".into(),
            }),
            attempts: 1,
            stream: false,
            timings: Timings::default(),
            total: Duration::ZERO,
            usage: None,
            cost: None,
            finish_reasons: Vec::new(),
            response_id: None,
            response_model: None,
            resumed_on: None,
        }
    }

    #[test]
    fn a_teams_requests_are_its_keys_a_teamless_keys_its_own() {
        let keys = keys();
        let key = |name| keys.by_name(name).unwrap();
        let of = |name| Served::of(&report(key(name), true)).unwrap();
        let scorers = |served: &Served| {
            ["a1", "a2", "b1", "solo1", "solo2"]
                .into_iter()
                .filter(|name| served.scorable_by(key(name)))
                .collect::<Vec<_>>()
        };
        assert_eq!(scorers(&of("a1")), ["a1", "a2"]);
        assert_eq!(scorers(&of("b1")), ["b1"]);
        assert_eq!(scorers(&of("solo1")), ["solo1"]);
    }

    fn feedback(score: f64) -> Feedback {
        Feedback {
            score,
            comment: None,
            metadata: None,
            at: 0,
        }
    }

    #[tokio::test]
    async fn served_requests_are_remembered_and_a_second_feedback_replaces_the_first() {
        let keys = keys();
        let index = FeedbackIndex::default();
        let Backend::Memory(memory) = &index.backend else {
            unreachable!("the default is in memory")
        };
        index.record(&report(keys.by_name("a1").unwrap(), false));
        assert_eq!(index.find("req_1").await.unwrap(), None, "never served");
        index.record(&report(keys.by_name("a1").unwrap(), true));
        let served = index.find("req_1").await.unwrap().unwrap();
        assert_eq!(
            (&*served.target, served.model.as_deref()),
            ("p/up", Some("m"))
        );
        assert_eq!(
            index.give("req_1", &feedback(1.0)).await.unwrap(),
            Some(false)
        );
        assert_eq!(
            index.give("req_1", &feedback(-0.5)).await.unwrap(),
            Some(true)
        );
        assert_eq!(memory.feedback("req_1"), Some(feedback(-0.5)));
        assert_eq!(index.give("req_2", &feedback(1.0)).await.unwrap(), None);
    }

    #[test]
    fn the_backend_follows_the_limits_unless_set() {
        let parse = |text: &str| crate::config::parse(text, |_| None);
        let redis = "limits: {backend: redis, redis: {url: 'redis://127.0.0.1:1'}}\n";
        let config = parse(redis).unwrap();
        assert_eq!(
            config.feedback.backend(&config.limits),
            FeedbackBackend::Redis
        );
        let config = parse(&format!("{redis}feedback: {{backend: memory}}\n")).unwrap();
        assert_eq!(
            config.feedback.backend(&config.limits),
            FeedbackBackend::Memory
        );
        let config = parse("feedback: {retention: 2h}\n").unwrap();
        assert_eq!(
            config.feedback.backend(&config.limits),
            FeedbackBackend::Memory
        );
        assert_eq!(config.feedback.retention, Duration::from_secs(7200));
        let errors =
            parse("feedback: {retention: 500ms, backend: redis, max_requests: 0}\n").unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "feedback.retention",
                "feedback.max_requests",
                "feedback.backend"
            ]
        );
    }
}
