//! `GET /v1/models`: OpenAI's list shape for the configured public models.

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct ModelList<'a> {
    pub object: &'static str,
    pub data: Vec<ModelObject<'a>>,
}

#[derive(Debug, Serialize)]
pub struct ModelObject<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'a str,
}

impl<'a> ModelObject<'a> {
    pub fn new(id: &'a str, owned_by: &'a str) -> Self {
        Self {
            id,
            object: "model",
            created: 0,
            owned_by,
        }
    }
}
