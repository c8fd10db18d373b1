//! The feedback index in this process: moka, entries living `retention` after they were
//! inserted (feedback given later does not extend them), at most `max_requests` at once.

use std::sync::{Arc, Mutex};

use moka::sync::Cache;

use super::{Feedback, Served};
use crate::config::schema::FeedbackSettings;

pub struct MemoryIndex {
    requests: Cache<Arc<str>, Arc<Entry>>,
}

struct Entry {
    served: Served,
    feedback: Mutex<Option<Feedback>>,
}

impl MemoryIndex {
    pub fn new(settings: &FeedbackSettings) -> Self {
        let requests = Cache::builder()
            .time_to_live(settings.retention)
            .max_capacity(settings.max_requests)
            .build();
        Self { requests }
    }

    pub fn remember(&self, id: Arc<str>, served: Served) {
        let entry = Entry {
            served,
            feedback: Mutex::new(None),
        };
        self.requests.insert(id, Arc::new(entry));
    }

    pub fn find(&self, id: &str) -> Option<Served> {
        self.requests.get(id).map(|entry| entry.served.clone())
    }

    pub fn give(&self, id: &str, feedback: &Feedback) -> Option<bool> {
        let entry = self.requests.get(id)?;
        let mut kept = entry.feedback.lock().unwrap_or_else(|p| p.into_inner());
        Some(kept.replace(feedback.clone()).is_some())
    }

    #[cfg(test)]
    pub fn feedback(&self, id: &str) -> Option<Feedback> {
        let entry = self.requests.get(id)?;
        let kept = entry.feedback.lock().unwrap_or_else(|p| p.into_inner());
        kept.clone()
    }
}
