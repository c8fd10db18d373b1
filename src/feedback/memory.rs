//! The feedback index in this process: at most `max_requests` requests (quick_cache, which
//! evicts the least useful first), each found for `retention` after it was served (feedback
//! given later does not extend it).
//!
//! Every served request is inserted, so insertion is the hot path: quick_cache's insert is
//! a hash and a short lock on one shard, where a cache that expires entries itself (moka)
//! pays for its timer wheel and write queue on every insert. An expired entry is not
//! looked for; it stays until capacity pushes it out, which the bound keeps finite.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use quick_cache::sync::Cache;

use super::{Feedback, Served};
use crate::clock::{self, Instant};
use crate::config::schema::FeedbackSettings;

pub struct MemoryIndex {
    requests: Cache<Arc<str>, Arc<Entry>>,
    retention: Duration,
}

struct Entry {
    served: Served,
    at: Instant,
    /// Boxed: most requests are never scored, and every one is remembered.
    feedback: Mutex<Option<Box<Feedback>>>,
}

impl MemoryIndex {
    pub fn new(settings: &FeedbackSettings) -> Self {
        let capacity = usize::try_from(settings.max_requests).unwrap_or(usize::MAX);
        Self {
            requests: Cache::new(capacity),
            retention: settings.retention,
        }
    }

    pub fn remember(&self, id: Arc<str>, served: Served) {
        let entry = Entry {
            served,
            at: clock::now(),
            feedback: Mutex::new(None),
        };
        self.requests.insert(id, Arc::new(entry));
    }

    pub fn find(&self, id: &str) -> Option<Served> {
        self.entry(id).map(|entry| entry.served.clone())
    }

    pub fn give(&self, id: &str, feedback: &Feedback) -> Option<bool> {
        let entry = self.entry(id)?;
        let mut kept = entry.feedback.lock().unwrap_or_else(|p| p.into_inner());
        Some(kept.replace(Box::new(feedback.clone())).is_some())
    }

    /// The request `id` if it is remembered and not expired.
    fn entry(&self, id: &str) -> Option<Arc<Entry>> {
        let entry = self.requests.get(id)?;
        let age = clock::now().saturating_duration_since(entry.at);
        (age < self.retention).then_some(entry)
    }

    #[cfg(test)]
    pub fn feedback(&self, id: &str) -> Option<Feedback> {
        let entry = self.entry(id)?;
        let kept = entry.feedback.lock().unwrap_or_else(|p| p.into_inner());
        kept.as_deref().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served() -> Served {
        Served {
            key: "k".into(),
            team: None,
            model: None,
            target: "p/m".into(),
            prompt_version: None,
            variant: None,
            trace_id: None,
            span_id: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_is_found_until_its_retention_has_passed() {
        let settings = FeedbackSettings {
            retention: Duration::from_secs(60),
            ..FeedbackSettings::default()
        };
        let index = MemoryIndex::new(&settings);
        index.remember("r".into(), served());
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(index.find("r"), Some(served()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(index.find("r"), None);
        let feedback = Feedback {
            score: 1.0,
            comment: None,
            metadata: None,
            at: 0,
        };
        assert_eq!(
            index.give("r", &feedback),
            None,
            "expired: nothing to score"
        );
    }

    #[test]
    fn at_most_max_requests_are_kept() {
        let settings = FeedbackSettings {
            max_requests: 100,
            ..FeedbackSettings::default()
        };
        let index = MemoryIndex::new(&settings);
        for n in 0..1000 {
            index.remember(Arc::from(format!("r{n}")), served());
        }
        let kept = (0..1000).filter(|n| index.find(&format!("r{n}")).is_some());
        assert!(kept.count() <= 100);
        assert!(index.find("r999").is_some(), "the newest is kept");
    }
}
