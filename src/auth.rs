//! Virtual keys: who is calling, and what they may use.
//!
//! Keys look like `sk-sy-…` and are stored only as their SHA-256 (a key has enough
//! randomness that a fast hash is safe, and a slow one would turn authentication into a
//! CPU attack). A request's key is hashed once, looked up by hash, and the stored hash is
//! compared in constant time. A key belongs to at most one team (the tenant); both may
//! restrict the public models they can use.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderMap;
use indexmap::IndexMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::schema::{AuthConfig, BudgetConfig, KeyConfig, LimitConfig};
use crate::error::GatewayError;

/// The development key the default config ships with (documented in the README).
pub const DEV_KEY: &str = "sk-sy-dev";
/// Every virtual key starts with this.
pub const KEY_PREFIX: &str = "sk-sy-";

pub type KeyHash = [u8; 32];

pub fn hash_key(key: &str) -> KeyHash {
    Sha256::digest(key.as_bytes()).into()
}

/// A new virtual key: the prefix and 32 URL-safe characters of OS randomness (192 bits).
pub fn new_key() -> Result<String, getrandom::Error> {
    use base64::Engine;
    let mut random = [0u8; 24];
    getrandom::fill(&mut random)?;
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random);
    Ok(format!("{KEY_PREFIX}{encoded}"))
}

pub fn hex(hash: &KeyHash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(text: &str) -> Option<KeyHash> {
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(hash)
}

#[derive(Debug)]
pub struct Team {
    pub name: Arc<str>,
    /// `None`: every model.
    pub models: Option<Vec<String>>,
    pub metadata: IndexMap<String, String>,
    pub limits: LimitConfig,
    pub model_limits: IndexMap<String, LimitConfig>,
    pub budget: BudgetConfig,
}

#[derive(Debug)]
pub struct Key {
    pub name: Arc<str>,
    pub hash: KeyHash,
    pub team: Option<Arc<Team>>,
    pub models: Option<Vec<String>>,
    pub enabled: bool,
    pub expires_at: Option<SystemTime>,
    pub metadata: IndexMap<String, String>,
    pub limits: LimitConfig,
    pub model_limits: IndexMap<String, LimitConfig>,
    pub budget: BudgetConfig,
}

impl Key {
    /// Whether this key (and its team) may use the public model `model`.
    pub fn allows(&self, model: &str) -> bool {
        let allowed = |list: &Option<Vec<String>>| {
            list.as_ref()
                .is_none_or(|models| models.iter().any(|m| m == "*" || m == model))
        };
        allowed(&self.models) && self.team.as_ref().is_none_or(|t| allowed(&t.models))
    }
}

/// Keys by hash, with the teams they may belong to: the keys a config defines, or the keys
/// created through the admin API (see `key_store.rs`).
#[derive(Debug, Default)]
pub struct KeyTable {
    by_hash: HashMap<KeyHash, Arc<Key>>,
    teams: Teams,
}

/// Teams by name.
pub type Teams = HashMap<Arc<str>, Arc<Team>>;

impl KeyTable {
    /// Built from a validated config (hashes, teams and times are known to be well formed).
    pub fn build(config: &AuthConfig) -> Self {
        let teams = config
            .teams
            .iter()
            .map(|(name, team)| {
                let name: Arc<str> = Arc::from(name.as_str());
                let team = Team {
                    name: name.clone(),
                    models: team.models.clone(),
                    metadata: team.metadata.clone(),
                    limits: team.limits,
                    model_limits: team.model_limits.clone(),
                    budget: team.budget,
                };
                (name, Arc::new(team))
            })
            .collect();
        Self::with_teams(&config.keys, teams)
    }

    /// `keys` (validated), belonging to `teams`. A key whose team is not among them is
    /// left out: it must not escape its team's limits.
    pub fn with_teams<'a>(
        keys: impl IntoIterator<Item = (&'a String, &'a KeyConfig)>,
        teams: Teams,
    ) -> Self {
        let by_hash = keys
            .into_iter()
            .filter_map(|(name, key)| {
                let hash = parse_hex(&key.sha256.to_ascii_lowercase())?;
                let expires_at = key
                    .expires_at
                    .as_deref()
                    .and_then(|at| humantime::parse_rfc3339_weak(at).ok());
                let key = Key {
                    name: Arc::from(name.as_str()),
                    hash,
                    team: match &key.team {
                        Some(team) => Some(teams.get(team.as_str())?.clone()),
                        None => None,
                    },
                    models: key.models.clone(),
                    enabled: key.enabled,
                    expires_at,
                    metadata: key.metadata.clone(),
                    limits: key.limits,
                    model_limits: key.model_limits.clone(),
                    budget: key.budget,
                };
                Some((hash, Arc::new(key)))
            })
            .collect();
        Self { by_hash, teams }
    }

    pub fn teams(&self) -> &Teams {
        &self.teams
    }

    /// Every key, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &Arc<Key>> {
        self.by_hash.values()
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Key>> {
        self.keys().find(|key| &*key.name == name)
    }

    /// Whether the well-known development key is accepted.
    pub fn has_dev_key(&self) -> bool {
        self.by_hash.contains_key(&hash_key(DEV_KEY))
    }

    /// The key with this hash, found by lookup and confirmed in constant time.
    fn find(&self, hash: &KeyHash) -> Option<&Arc<Key>> {
        self.by_hash
            .get(hash)
            .filter(|key| bool::from(key.hash.ct_eq(hash)))
    }
}

/// The key presented in `headers`, from the first table that has it, if it is enabled and
/// not expired. A `None` table could not be loaded (its store is unreachable): a key found
/// nowhere else is then unavailable rather than unknown.
pub fn authenticate(
    headers: &HeaderMap,
    tables: &[Option<&KeyTable>],
) -> Result<Arc<Key>, GatewayError> {
    let presented = presented_key(headers).ok_or(GatewayError::MissingKey)?;
    let hash = hash_key(presented);
    let mut unloaded = false;
    let key = tables
        .iter()
        .find_map(|table| match table {
            Some(table) => table.find(&hash),
            None => {
                unloaded = true;
                None
            }
        })
        .ok_or(if unloaded {
            GatewayError::KeyStoreUnavailable
        } else {
            GatewayError::InvalidKey
        })?;
    let expired = key.expires_at.is_some_and(|at| at <= crate::clock::wall());
    if !key.enabled || expired {
        return Err(GatewayError::InvalidKey);
    }
    Ok(key.clone())
}

/// Whether `headers` present the key whose SHA-256 is `sha256` (hex), compared in constant
/// time (the admin key).
pub fn presents(headers: &HeaderMap, sha256: &str) -> bool {
    let (Some(presented), Some(expected)) = (
        presented_key(headers),
        parse_hex(&sha256.to_ascii_lowercase()),
    ) else {
        return false;
    };
    bool::from(hash_key(presented).ct_eq(&expected))
}

/// `Authorization: Bearer <key>` (the OpenAI SDKs), or `x-api-key` / `api-key` (clients
/// written for Anthropic or Azure).
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, key) = value.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| key.trim());
    }
    ["x-api-key", "api-key"]
        .iter()
        .find_map(|name| headers.get(*name)?.to_str().ok())
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::{KeyConfig, TeamConfig};

    fn table() -> KeyTable {
        let mut config = AuthConfig::default();
        config.teams.insert(
            "search".into(),
            TeamConfig {
                models: Some(vec!["small".into(), "big".into()]),
                ..TeamConfig::default()
            },
        );
        let key = |team: Option<&str>, models: Option<Vec<String>>, enabled: bool| KeyConfig {
            sha256: String::new(),
            team: team.map(str::to_owned),
            models,
            enabled,
            expires_at: None,
            metadata: IndexMap::new(),
            limits: LimitConfig::default(),
            model_limits: IndexMap::new(),
            budget: BudgetConfig::default(),
        };
        let mut add = |name: &str, secret: &str, mut k: KeyConfig| {
            k.sha256 = hex(&hash_key(secret));
            config.keys.insert(name.into(), k);
        };
        add(
            "a",
            "sk-sy-a",
            key(Some("search"), Some(vec!["small".into()]), true),
        );
        add("off", "sk-sy-off", key(None, None, false));
        let mut old = key(None, None, true);
        old.expires_at = Some("2020-01-01T00:00:00Z".into());
        add("old", "sk-sy-old", old);
        KeyTable::build(&config)
    }

    impl KeyTable {
        fn auth(&self, headers: &HeaderMap) -> Result<Arc<Key>, GatewayError> {
            authenticate(headers, &[Some(self)])
        }
    }

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        headers
    }

    #[test]
    fn authenticates_known_enabled_unexpired_keys() {
        let table = table();
        let key = table
            .auth(&headers("authorization", "Bearer sk-sy-a"))
            .unwrap();
        assert_eq!(&*key.name, "a");
        assert!(table.auth(&headers("x-api-key", "sk-sy-a")).is_ok());
        let err = |h| table.auth(&h).unwrap_err().label();
        assert_eq!(err(HeaderMap::new()), "missing_key");
        assert_eq!(
            err(headers("authorization", "Bearer sk-sy-nope")),
            "invalid_key"
        );
        assert_eq!(
            err(headers("authorization", "Bearer sk-sy-off")),
            "invalid_key"
        );
        assert_eq!(
            err(headers("authorization", "Bearer sk-sy-old")),
            "invalid_key"
        );
        assert_eq!(
            err(headers("authorization", "Basic sk-sy-a")),
            "missing_key"
        );
    }

    #[test]
    fn both_key_and_team_restrict_models() {
        let table = table();
        let key = table
            .auth(&headers("authorization", "Bearer sk-sy-a"))
            .unwrap();
        assert!(key.allows("small"));
        assert!(!key.allows("big"), "the key's own list is narrower");
        assert!(!key.allows("other"));
    }

    #[test]
    fn new_keys_are_prefixed_and_distinct() {
        let (a, b) = (new_key().unwrap(), new_key().unwrap());
        assert!(
            a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 32,
            "{a}"
        );
        assert_ne!(a, b);
    }

    #[test]
    fn hashes_round_trip_through_hex() {
        let hash = hash_key(DEV_KEY);
        assert_eq!(
            hex(&hash),
            "e36d7c13e925f38088705a2f58b692147ed5db13a0ab2a0cb56e1fc644b0080d"
        );
        assert_eq!(parse_hex(&hex(&hash)), Some(hash));
    }
}
