//! Keys created through the admin API, next to the keys of the config file.
//!
//! With the memory backend they live in this process (and are gone at restart). With the
//! Redis backend they live in one Redis hash, `<prefix>keys` (name → the key's settings as
//! JSON, hash included, never the key), beside a version counter `<prefix>keys:version`
//! that every change increments in the same script. Each replica polls the counter every
//! [`POLL`] and reloads the hash when it moved, so a key created or revoked on one replica
//! is honoured by all within about that long, while authentication itself stays an
//! in-memory lookup (no Redis call per request, none for unknown keys).
//!
//! Until a replica has read the hash once, a key it does not know might be one the hash
//! holds: such requests get 503 `key_store_unavailable` rather than a misleading 401.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use http::HeaderMap;
use redis::Script;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::auth::{self, Key, KeyTable, Teams};
use crate::config::schema::{KeyConfig, LimitsBackend, LimitsSettings};
use crate::error::GatewayError;
use crate::shared_store;

/// How often a replica checks for keys changed elsewhere.
pub const POLL: Duration = Duration::from_millis(250);
/// Longest wait for one call to the shared key store.
const TIMEOUT: Duration = Duration::from_secs(1);

/// A key created through the admin API, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredKey {
    /// RFC 3339.
    pub created_at: String,
    #[serde(flatten)]
    pub key: KeyConfig,
}

/// Admin-created keys by name.
pub type Records = BTreeMap<String, StoredKey>;

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("a key named '{0}' already exists")]
    Exists(String),
    #[error("no key named '{0}' was created through the admin API")]
    NotFound(String),
    #[error("the key '{0}' was changed meanwhile: read it again and retry")]
    Changed(String),
    #[error("the shared key store (Redis) did not answer")]
    Unavailable,
}

impl From<ChangeError> for GatewayError {
    fn from(error: ChangeError) -> Self {
        match error {
            ChangeError::Exists(_) | ChangeError::Changed(_) => Self::Conflict(error.to_string()),
            ChangeError::NotFound(name) => Self::NotFound { kind: "key", name },
            ChangeError::Unavailable => Self::KeyStoreUnavailable,
        }
    }
}

enum Change<'a> {
    Create(&'a StoredKey),
    /// Only if the key is still `expected` (what the change was computed from).
    Update {
        expected: &'a StoredKey,
        new: &'a StoredKey,
    },
    Delete,
}

pub struct KeyStore {
    redis: Option<RedisKeys>,
    /// `None` until the shared store was read once.
    records: ArcSwapOption<Records>,
    /// The teams of the current config, which admin-created keys may belong to.
    teams: ArcSwap<Teams>,
    /// Built from `records` and `teams`.
    table: ArcSwapOption<KeyTable>,
    /// Serialises rebuilds and local changes (both rare).
    writing: Mutex<()>,
    /// The version of the shared hash `records` was read at.
    version: AtomicI64,
    /// One read of the shared hash at a time, so an older read never replaces a newer one.
    refreshing: tokio::sync::Mutex<()>,
    reachable: AtomicBool,
}

impl Default for KeyStore {
    fn default() -> Self {
        Self::in_memory()
    }
}

impl KeyStore {
    /// The store `settings` ask for. [restart]
    pub fn new(settings: &LimitsSettings) -> Result<Self, String> {
        match (&settings.backend, &settings.redis) {
            (LimitsBackend::Redis, Some(redis)) => Ok(Self {
                redis: Some(RedisKeys::new(&redis.url, &redis.key_prefix)?),
                records: ArcSwapOption::empty(),
                table: ArcSwapOption::empty(),
                ..Self::in_memory()
            }),
            _ => Ok(Self::in_memory()),
        }
    }

    fn in_memory() -> Self {
        Self {
            redis: None,
            records: ArcSwapOption::from_pointee(Records::new()),
            teams: ArcSwap::default(),
            table: ArcSwapOption::from_pointee(KeyTable::default()),
            writing: Mutex::default(),
            version: AtomicI64::new(-1),
            refreshing: tokio::sync::Mutex::const_new(()),
            reachable: AtomicBool::new(true),
        }
    }

    /// The key presented in `headers`: from the config's keys first, then from the admin
    /// API's.
    pub fn authenticate(
        &self,
        config_keys: &KeyTable,
        headers: &HeaderMap,
    ) -> Result<Arc<Key>, GatewayError> {
        let created = self.table.load();
        auth::authenticate(headers, &[Some(config_keys), created.as_deref()])
    }

    /// The admin-created keys as last read, `None` if the shared store was never read.
    pub fn records(&self) -> Option<Arc<Records>> {
        self.records.load_full()
    }

    /// The admin-created keys as runtime keys (with their teams).
    pub fn table(&self) -> Option<Arc<KeyTable>> {
        self.table.load_full()
    }

    /// A config was loaded: admin-created keys now belong to its teams.
    pub fn follow_config(&self, config_keys: &KeyTable) {
        let _writing = lock(&self.writing);
        self.teams.store(Arc::new(config_keys.teams().clone()));
        self.rebuild();
        let records = self.records.load();
        for name in records.iter().flat_map(|r| r.keys()) {
            if config_keys.by_name(name).is_some() {
                tracing::warn!(key = %name, "the config file and the admin API both define this key name: the two keys share its limits, budgets and usage; rename one");
            }
        }
    }

    pub async fn create(&self, name: &str, key: &StoredKey) -> Result<(), ChangeError> {
        self.change(name, Change::Create(key)).await
    }

    /// Replaces `expected` (the key as the caller read it) by `new`.
    pub async fn update(
        &self,
        name: &str,
        expected: &StoredKey,
        new: &StoredKey,
    ) -> Result<(), ChangeError> {
        self.change(name, Change::Update { expected, new }).await
    }

    pub async fn revoke(&self, name: &str) -> Result<(), ChangeError> {
        self.change(name, Change::Delete).await
    }

    async fn change(&self, name: &str, change: Change<'_>) -> Result<(), ChangeError> {
        let Some(redis) = &self.redis else {
            return self.change_locally(name, &change);
        };
        let version = tokio::time::timeout(TIMEOUT, redis.change(name, &change))
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(ChangeError::Unavailable)?;
        let name = name.to_owned();
        match (version, change) {
            (1.., _) => {}
            (0, Change::Create(_)) => return Err(ChangeError::Exists(name)),
            (0, _) => return Err(ChangeError::NotFound(name)),
            _ => return Err(ChangeError::Changed(name)),
        }
        // This replica sees its own change at once; the others at their next poll.
        self.refresh().await;
        Ok(())
    }

    fn change_locally(&self, name: &str, change: &Change<'_>) -> Result<(), ChangeError> {
        let _writing = lock(&self.writing);
        let mut records = self
            .records
            .load_full()
            .as_deref()
            .cloned()
            .unwrap_or_default();
        let current = records.get(name);
        match change {
            Change::Create(_) if current.is_some() => {
                return Err(ChangeError::Exists(name.to_owned()));
            }
            Change::Update { .. } | Change::Delete if current.is_none() => {
                return Err(ChangeError::NotFound(name.to_owned()));
            }
            Change::Update { expected, .. } if current != Some(*expected) => {
                return Err(ChangeError::Changed(name.to_owned()));
            }
            Change::Create(key) | Change::Update { new: key, .. } => {
                records.insert(name.to_owned(), (*key).clone());
            }
            Change::Delete => {
                records.remove(name);
            }
        }
        self.records.store(Some(Arc::new(records)));
        self.rebuild();
        Ok(())
    }

    /// Keeps this replica's view of the shared keys current, until the runtime stops or
    /// the handle is aborted. `None` with the memory backend (nothing to follow).
    pub fn follow(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        self.redis.as_ref()?;
        let store = self.clone();
        Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(POLL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                store.refresh().await;
            }
        }))
    }

    /// Reads the shared keys if their version changed (moved on, or back: a Redis that
    /// lost its data is believed too).
    async fn refresh(&self) {
        let Some(redis) = &self.redis else { return };
        let _refreshing = self.refreshing.lock().await;
        let seen = self.version.load(Ordering::Acquire);
        let read = tokio::time::timeout(TIMEOUT, redis.read_if_changed(seen)).await;
        match read {
            Ok(Ok(None)) => self.reached(),
            Ok(Ok(Some((version, records)))) => {
                self.reached();
                let _writing = lock(&self.writing);
                self.version.store(version, Ordering::Release);
                self.records.store(Some(Arc::new(records)));
                self.rebuild();
            }
            Ok(Err(error)) => self.unreached(&error.to_string()),
            Err(_) => self.unreached("no answer within the timeout"),
        }
    }

    fn reached(&self) {
        if !self.reachable.swap(true, Ordering::Relaxed) {
            tracing::warn!("the shared key store (Redis) is back: admin key changes apply again");
        }
    }

    fn unreached(&self, error: &str) {
        if self.reachable.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                %error,
                "the shared key store (Redis) is unavailable: admin-created keys are served as last read, changes made elsewhere are not seen"
            );
        }
    }

    /// Rebuilds the table; the caller holds `writing`.
    fn rebuild(&self) {
        let Some(records) = self.records.load_full() else {
            return;
        };
        let teams = self.teams.load_full();
        for (name, record) in records.iter() {
            if let Some(team) = &record.key.team
                && !teams.contains_key(team.as_str())
            {
                tracing::warn!(key = %name, %team, "a key created through the admin API belongs to a team the config no longer has: it is refused until the team is back");
            }
        }
        let keys = records.iter().map(|(name, record)| (name, &record.key));
        let table = KeyTable::with_teams(keys, (*teams).clone());
        self.table.store(Some(Arc::new(table)));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The keys in Redis: one hash and its version counter.
struct RedisKeys {
    connection: ConnectionManager,
    records: String,
    version: String,
    change: Script,
}

impl RedisKeys {
    fn new(url: &str, prefix: &str) -> Result<Self, String> {
        Ok(Self {
            connection: shared_store::connect(url, TIMEOUT)?,
            records: format!("{prefix}keys"),
            version: format!("{prefix}keys:version"),
            change: Script::new(include_str!("key_store.lua")),
        })
    }

    /// Applies a change: the new version, or 0 when the key exists (create) or does not
    /// (update, delete), -1 when it is not the one expected (update).
    async fn change(&self, name: &str, change: &Change<'_>) -> Result<i64, redis::RedisError> {
        let json = |key: &StoredKey| serde_json::to_string(key).unwrap_or_default();
        let (op, record, expected) = match change {
            Change::Create(key) => ("create", json(key), String::new()),
            Change::Update { expected, new } => ("update", json(new), json(expected)),
            Change::Delete => ("delete", String::new(), String::new()),
        };
        let mut connection = self.connection.clone();
        let version: i64 = self
            .change
            .key(&self.records)
            .key(&self.version)
            .arg(op)
            .arg(name)
            .arg(record)
            .arg(expected)
            .invoke_async(&mut connection)
            .await?;
        Ok(version)
    }

    /// The keys and their version, unless the version is still `seen`.
    async fn read_if_changed(
        &self,
        seen: i64,
    ) -> Result<Option<(i64, Records)>, redis::RedisError> {
        let mut connection = self.connection.clone();
        let version: Option<i64> = redis::cmd("GET")
            .arg(&self.version)
            .query_async(&mut connection)
            .await?;
        if version.unwrap_or(0) == seen {
            return Ok(None);
        }
        let (version, raw): (Option<i64>, Vec<(String, String)>) = redis::pipe()
            .atomic()
            .get(&self.version)
            .hgetall(&self.records)
            .query_async(&mut connection)
            .await?;
        let records = raw
            .into_iter()
            .filter_map(|(name, json)| match serde_json::from_str(&json) {
                Ok(record) => Some((name, record)),
                Err(error) => {
                    tracing::warn!(key = %name, %error, "ignoring an unreadable key in the shared key store");
                    None
                }
            })
            .collect();
        Ok(Some((version.unwrap_or(0), records)))
    }
}
