//! What the admin API does: virtual keys (create, with the key returned once; list; show,
//! with usage and spend; update; revoke), teams (list; show, with usage and spend) and
//! the targets' circuit breakers (list).
//! Keys of the config file are listed and shown but changed only in the file. Answers are
//! JSON values; the HTTP side (routes, the admin key, bodies) is `http/admin.rs`.

use serde_json::{Value, json};

use crate::auth::{hash_key, hex, new_key};
use crate::config::schema::{KeyConfig, TeamConfig};
use crate::config::validate::{Names, key_errors};
use crate::error::GatewayError;
use crate::key_store::{KeyStore, Records, StoredKey};
use crate::limits::{Limiter, key_scope, team_scope};
use crate::snapshot::Snapshot;

/// Fields a client may never set: the gateway makes them.
const GENERATED: [&str; 3] = ["sha256", "created_at", "name"];

pub struct Admin<'a> {
    pub snapshot: &'a Snapshot,
    pub keys: &'a KeyStore,
    pub limiter: &'a Limiter,
}

impl Admin<'_> {
    pub fn list_keys(&self) -> Result<Value, GatewayError> {
        let records = self.records()?;
        let from_config = self
            .snapshot
            .auth
            .keys
            .iter()
            .map(|(name, key)| view(name, "config", None, key));
        let created = records
            .iter()
            .map(|(name, record)| view(name, "admin", Some(&record.created_at), &record.key));
        Ok(json!({"object": "list", "data": from_config.chain(created).collect::<Vec<_>>()}))
    }

    pub async fn show_key(&self, name: &str) -> Result<Value, GatewayError> {
        let records = self.records()?;
        let mut key = if let Some(key) = self.snapshot.auth.keys.get(name) {
            view(name, "config", None, key)
        } else if let Some(record) = records.get(name) {
            view(name, "admin", Some(&record.created_at), &record.key)
        } else {
            return Err(not_found("key", name));
        };
        key["usage"] = self.usage(&key_scope(name)).await?;
        Ok(key)
    }

    /// Creates a key from `body` (a name, generated when absent, and the key's settings)
    /// and returns it with the key itself: the only time it is shown.
    pub async fn create_key(&self, body: Value) -> Result<Value, GatewayError> {
        let Value::Object(mut fields) = body else {
            return Err(not_an_object());
        };
        let name = match fields.remove("name") {
            Some(Value::String(name)) => name,
            None | Some(Value::Null) => format!("key-{:08x}", fastrand::u32(..)),
            Some(_) => return Err(invalid("name", "expected a string".into())),
        };
        if let Some(field) = GENERATED.iter().find(|f| fields.contains_key(**f)) {
            return Err(generated(field));
        }
        let mut settings = settings(Value::Object(fields))?;
        self.check(&name, &settings)?;
        if self.snapshot.auth.keys.contains_key(&name) {
            return Err(GatewayError::Conflict(format!(
                "a key named '{name}' is defined in the config file"
            )));
        }
        let secret =
            new_key().map_err(|e| GatewayError::Internal(format!("no randomness: {e}")))?;
        settings.sha256 = hex(&hash_key(&secret));
        let record = StoredKey {
            created_at: humantime::format_rfc3339_seconds(crate::clock::wall()).to_string(),
            key: settings,
        };
        self.keys.create(&name, &record).await?;
        tracing::info!(key = %name, "admin: key created");
        let mut answer = view(&name, "admin", Some(&record.created_at), &record.key);
        answer["key"] = Value::String(secret);
        Ok(answer)
    }

    /// Applies a JSON merge patch (RFC 7386) to a key's settings.
    pub async fn update_key(&self, name: &str, patch: &Value) -> Result<Value, GatewayError> {
        let record = self.created(name)?;
        let Some(fields) = patch.as_object() else {
            return Err(not_an_object());
        };
        if let Some(field) = GENERATED.iter().find(|f| fields.contains_key(**f)) {
            return Err(generated(field));
        }
        let mut merged = serde_json::to_value(&record.key).map_err(internal)?;
        json_patch::merge(&mut merged, patch);
        let settings = settings(merged)?;
        self.check(name, &settings)?;
        let updated = StoredKey {
            created_at: record.created_at.clone(),
            key: settings,
        };
        // Refused (409) if the key changed since it was read here.
        self.keys.update(name, &record, &updated).await?;
        tracing::info!(key = %name, "admin: key updated");
        Ok(view(name, "admin", Some(&updated.created_at), &updated.key))
    }

    pub async fn revoke_key(&self, name: &str) -> Result<Value, GatewayError> {
        self.created(name)?;
        self.keys.revoke(name).await?;
        tracing::info!(key = %name, "admin: key revoked");
        Ok(json!({"object": "key", "name": name, "revoked": true}))
    }

    /// Every target of the current config with its circuit breaker, in-flight count and
    /// recent latency (this replica's view).
    pub fn list_breakers(&self) -> Value {
        let mut seen = std::collections::HashSet::new();
        let data: Vec<Value> = self
            .snapshot
            .models
            .values()
            .flat_map(|model| &model.targets)
            .filter(|target| seen.insert(target.health.name.clone()))
            .map(|target| {
                let health = &target.health;
                let breaker = health.breaker.view(&self.snapshot.resilience.breaker);
                json!({
                    "target": &*health.name,
                    "provider": &*target.provider.name,
                    "model": &*target.upstream_model,
                    "state": breaker.state,
                    "consecutive_failures": breaker.consecutive_failures,
                    "window": {
                        "requests": breaker.window_requests,
                        "failures": breaker.window_failures,
                    },
                    "trips": breaker.trips,
                    "next_probe_in_ms": breaker.next_probe_in_ms,
                    "in_flight": health.in_flight(),
                    "latency_ms": health.latency().as_secs_f64() * 1000.0,
                })
            })
            .collect();
        json!({"object": "list", "breakers": data})
    }

    pub fn list_teams(&self) -> Value {
        let data: Vec<Value> = self
            .snapshot
            .auth
            .teams
            .iter()
            .map(|(name, team)| team_view(name, team))
            .collect();
        json!({"object": "list", "data": data})
    }

    pub async fn show_team(&self, name: &str) -> Result<Value, GatewayError> {
        let team = self
            .snapshot
            .auth
            .teams
            .get(name)
            .ok_or_else(|| not_found("team", name))?;
        let records = self.records()?;
        let in_team = |key: &KeyConfig| key.team.as_deref() == Some(name);
        let members: Vec<&str> = self
            .snapshot
            .auth
            .keys
            .iter()
            .filter(|(_, key)| in_team(key))
            .map(|(name, _)| name.as_str())
            .chain(
                records
                    .iter()
                    .filter(|(_, r)| in_team(&r.key))
                    .map(|(name, _)| name.as_str()),
            )
            .collect();
        let mut view = team_view(name, team);
        view["keys"] = json!(members);
        view["usage"] = self.usage(&team_scope(name)).await?;
        Ok(view)
    }

    fn records(&self) -> Result<std::sync::Arc<Records>, GatewayError> {
        self.keys.records().ok_or(GatewayError::KeyStoreUnavailable)
    }

    /// A key created through the admin API (config keys change only in the file).
    /// (Checked first: a config reload may since have added a key of the same name, and
    /// this one must stay manageable.)
    fn created(&self, name: &str) -> Result<StoredKey, GatewayError> {
        if let Some(record) = self.records()?.get(name) {
            return Ok(record.clone());
        }
        if self.snapshot.auth.keys.contains_key(name) {
            return Err(GatewayError::Conflict(format!(
                "the key '{name}' is defined in the config file: change it there"
            )));
        }
        Err(not_found("key", name))
    }

    /// The same checks as for a key in the config file, against the current config.
    fn check(&self, name: &str, settings: &KeyConfig) -> Result<(), GatewayError> {
        let names = Names {
            model: &|model| self.snapshot.models.contains_key(model),
            team: &|team| self.snapshot.auth.teams.contains_key(team),
        };
        let errors = key_errors(name, settings, &names);
        let Some(first) = errors.first() else {
            return Ok(());
        };
        let message = errors
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        Err(invalid(&first.path, message))
    }

    async fn usage(&self, scope: &str) -> Result<Value, GatewayError> {
        let [today, month, total] = self
            .limiter
            .usage(scope)
            .await
            .map_err(|_| GatewayError::LimitsUnavailable)?;
        Ok(json!({"today": today, "this_month": month, "total": total}))
    }
}

/// A key as the admin API shows it: its settings (hash included, never the key).
fn view(name: &str, source: &str, created_at: Option<&str>, key: &KeyConfig) -> Value {
    let mut view = json!({"object": "key", "name": name, "source": source});
    if let Some(at) = created_at {
        view["created_at"] = json!(at);
    }
    merge_fields(&mut view, key);
    view
}

fn team_view(name: &str, team: &TeamConfig) -> Value {
    let mut view = json!({"object": "team", "name": name});
    merge_fields(&mut view, team);
    view
}

fn merge_fields(view: &mut Value, settings: &impl serde::Serialize) {
    if let (Some(view), Ok(Value::Object(fields))) =
        (view.as_object_mut(), serde_json::to_value(settings))
    {
        view.extend(fields);
    }
}

fn not_found(kind: &'static str, name: &str) -> GatewayError {
    GatewayError::NotFound {
        kind,
        name: name.to_owned(),
    }
}

/// A key's settings, as strictly as in the config file (unknown fields are errors).
fn settings(fields: Value) -> Result<KeyConfig, GatewayError> {
    serde_json::from_value(fields).map_err(|e| invalid("", e.to_string()))
}

fn invalid(param: &str, message: String) -> GatewayError {
    GatewayError::InvalidParam {
        param: param.to_owned(),
        message,
    }
}

fn not_an_object() -> GatewayError {
    invalid("", "expected a JSON object with the key's settings".into())
}

fn generated(field: &str) -> GatewayError {
    invalid(
        field,
        format!("'{field}' is set by the gateway and cannot be given"),
    )
}

fn internal(error: impl std::fmt::Display) -> GatewayError {
    GatewayError::Internal(error.to_string())
}
