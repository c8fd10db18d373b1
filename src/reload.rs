//! The current config snapshot and how it is replaced.
//!
//! A reload goes through the same path as startup (load → validate → build) and swaps
//! the new snapshot in atomically only when every step succeeded; otherwise the old one
//! keeps serving, the errors are logged at WARN and `switchyard_config_reloads_total
//! {result="failure"}` counts it. Requests hold the snapshot they started with, so
//! in-flight work (streams included) finishes on it. Reloads are triggered by SIGHUP and by
//! changes to the config file (its directory is watched, because editors replace files by
//! renaming).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::schema::RawConfig;
use crate::config::{self, ConfigError, ConfigErrors, ConfigSource};
use crate::shared::Shared;
use crate::snapshot::Snapshot;
use crate::telemetry::settings;
use crate::telemetry::spans::Traces;

/// Editors write a file in several steps; wait this long after the last event.
const DEBOUNCE: Duration = Duration::from_millis(150);

pub struct ConfigStore {
    source: ConfigSource,
    shared: Arc<Shared>,
    current: ArcSwap<Snapshot>,
}

impl ConfigStore {
    /// Loads the config, sets up the state that outlives reloads from it (the limit store
    /// it names) and builds the first snapshot.
    pub fn open(source: ConfigSource) -> Result<Self, ConfigErrors> {
        let raw = config::load(&source)?;
        let error = |path: &str, message: String| ConfigErrors {
            origin: source.to_string(),
            errors: vec![ConfigError {
                path: path.to_owned(),
                location: None,
                message,
            }],
        };
        let mut shared =
            Shared::new(&raw.limits, &raw.feedback).map_err(|m| error("limits.redis", m))?;
        let env = |name: &str| std::env::var(name).ok();
        shared.traces = settings::resolve(&raw.telemetry.traces, &env)
            .and_then(|settings| Traces::start(settings, &shared.http, &shared.metrics))
            .map_err(|m| error("telemetry.traces", m))?;
        let snapshot = build_from(&source, raw, &shared)?;
        shared.keys.follow_config(&snapshot.keys);
        Ok(Self {
            source,
            shared: Arc::new(shared),
            current: ArcSwap::from_pointee(snapshot),
        })
    }

    /// The snapshot a new request runs on.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn source(&self) -> &ConfigSource {
        &self.source
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Builds a new snapshot from the source and swaps it in, or keeps the current one.
    pub fn reload(&self) -> Result<(), ConfigErrors> {
        let result = build(&self.source, &self.shared);
        self.shared.metrics.count_reload(result.is_ok());
        match result {
            Ok(snapshot) => {
                let old = self.current.load();
                if old.server.listen != snapshot.server.listen {
                    tracing::warn!(
                        listen = %snapshot.server.listen,
                        "server.listen changed; it takes effect at the next restart"
                    );
                }
                let admin_listen = |s: &Snapshot| s.admin.as_ref().and_then(|a| a.listen);
                if admin_listen(&old) != admin_listen(&snapshot) {
                    tracing::warn!("admin.listen changed; it takes effect at the next restart");
                }
                if (old.limits.backend, &old.limits.redis)
                    != (snapshot.limits.backend, &snapshot.limits.redis)
                {
                    tracing::warn!(
                        "limits.backend or limits.redis changed; the limit store changes at the next restart"
                    );
                }
                if old.telemetry != snapshot.telemetry {
                    tracing::warn!("telemetry changed; it takes effect at the next restart");
                }
                self.shared.keys.follow_config(&snapshot.keys);
                self.current.store(Arc::new(snapshot));
                tracing::info!(source = %self.source, "config reloaded");
                Ok(())
            }
            Err(errors) => {
                tracing::warn!("config reload failed, the previous config keeps serving: {errors}");
                Err(errors)
            }
        }
    }
}

fn build(source: &ConfigSource, shared: &Shared) -> Result<Snapshot, ConfigErrors> {
    build_from(source, config::load(source)?, shared)
}

fn build_from(
    source: &ConfigSource,
    raw: RawConfig,
    shared: &Shared,
) -> Result<Snapshot, ConfigErrors> {
    Snapshot::build(raw, shared).map_err(|errors| ConfigErrors {
        origin: source.to_string(),
        errors,
    })
}

/// Starts reloading on SIGHUP and on changes to the config file. Runs until the runtime
/// stops; the returned handle can abort it.
pub fn watch(store: Arc<ConfigStore>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let (changed, mut changes) = mpsc::unbounded_channel();
    let watcher = match store.source.file() {
        Some(path) => Some(watch_file(path, changed).map_err(std::io::Error::other)?),
        None => None,
    };
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        // The watcher stops when dropped: keep it for as long as this task runs.
        let _watcher = watcher;
        loop {
            tokio::select! {
                Some(()) = changes.recv() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    while changes.try_recv().is_ok() {}
                }
                Some(()) = hangup.recv() => tracing::info!("SIGHUP: reloading the config"),
                else => break,
            }
            // Building a snapshot reads a file: keep it off the async workers. Errors are
            // logged and counted by `reload`.
            let store = store.clone();
            let _ = tokio::task::spawn_blocking(move || store.reload()).await;
        }
    }))
}

fn watch_file(
    path: &Path,
    changed: mpsc::UnboundedSender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    let file_name = path.file_name().map(ToOwned::to_owned);
    let directory = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let relevant = !matches!(event.kind, EventKind::Access(_))
            && event
                .paths
                .iter()
                .any(|p| p.file_name() == file_name.as_deref());
        if relevant {
            let _ = changed.send(());
        }
    })?;
    watcher.watch(&directory, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
