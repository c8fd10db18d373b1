//! Starting and stopping a gateway: config store, app, listeners (public, and admin when
//! configured), reload watcher, the follower of keys shared through Redis. The binary and
//! the integration tests start gateways the same way.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app;
use crate::config::{ConfigErrors, ConfigSource};
use crate::health_checks;
use crate::reload::{self, ConfigStore};
use crate::server::{self, ServerOptions};
use crate::shared::Shared;
use crate::snapshot::Snapshot;

pub struct GatewayOptions {
    pub config: ConfigSource,
    /// Overrides `server.listen` (for example `127.0.0.1:0` in tests).
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot watch the config for reloads: {0}")]
    Watch(std::io::Error),
    #[error("loading the config failed: {0}")]
    Load(String),
}

/// A gateway serving in the background.
pub struct Gateway {
    pub addr: SocketAddr,
    /// The admin listener's address, when `admin.listen` is set.
    pub admin_addr: Option<SocketAddr>,
    /// The metrics listener's address, when `server.metrics_listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    pub store: Arc<ConfigStore>,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    /// Reload watcher, key follower, health checks: stopped at shutdown.
    background: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Loads the config, binds the listeners and starts serving.
    pub async fn start(options: GatewayOptions) -> Result<Self, StartError> {
        // Loading reads files and builds tokenizers: off the async workers, as a reload is.
        let config = options.config;
        let store = tokio::task::spawn_blocking(move || ConfigStore::open(config))
            .await
            .map_err(|e| StartError::Load(e.to_string()))??;
        let store = Arc::new(store);
        let snapshot = store.current();
        let public = bind(options.listen.unwrap_or(snapshot.server.listen)).await?;
        let admin = match snapshot.admin.as_ref().and_then(|a| a.listen) {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let metrics = match snapshot.server.metrics_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let mut background = vec![reload::watch(store.clone()).map_err(StartError::Watch)?];
        background.extend(store.shared().keys.follow());
        background.push(health_checks::start(store.clone()));
        let (stop, stopped) = watch::channel(false);
        let app = app::app(store.clone());
        let (addr, public) = public;
        let mut servers = vec![spawn_server(
            public,
            app::router(app.clone()),
            &store,
            &stopped,
        )];
        // The other addresses are logged first: "switchyard listening" means all are up.
        let metrics_addr = metrics.map(|(metrics_addr, listener)| {
            let router = app::metrics_router(app.clone());
            servers.push(spawn_server(listener, router, &store, &stopped));
            tracing::info!(addr = %metrics_addr, "metrics listening");
            metrics_addr
        });
        let admin_addr = admin.map(|(admin_addr, listener)| {
            servers.push(spawn_server(
                listener,
                app::admin_router(app),
                &store,
                &stopped,
            ));
            tracing::info!(addr = %admin_addr, "admin API listening");
            admin_addr
        });
        tracing::info!(%addr, config = %store.source(), "switchyard listening");
        if snapshot.keys.has_dev_key() {
            tracing::warn!(
                "the development key {} is active: anyone who can reach the gateway can use it; replace it before exposing the gateway",
                crate::auth::DEV_KEY
            );
        }
        Ok(Self {
            addr,
            admin_addr,
            metrics_addr,
            store,
            stop,
            servers,
            background,
        })
    }

    /// Stops accepting, lets in-flight requests finish within the grace period, returns
    /// when done.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in &self.background {
            task.abort();
        }
        for server in self.servers {
            let _ = server.await;
        }
        // The spans of the last requests still go out, within a bound.
        let grace = std::time::Duration::from_secs(5);
        self.store.shared().traces.shutdown(grace).await;
    }
}

async fn bind(addr: SocketAddr) -> Result<(SocketAddr, TcpListener), StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    Ok((addr, listener))
}

fn spawn_server(
    listener: TcpListener,
    router: axum::Router,
    store: &Arc<ConfigStore>,
    stopped: &watch::Receiver<bool>,
) -> JoinHandle<()> {
    let options = ServerOptions {
        header_read_timeout: store.current().server.header_read_timeout,
    };
    let grace_store = store.clone();
    let mut stopped = stopped.clone();
    tokio::spawn(server::serve(
        listener,
        router,
        options,
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        },
        move || grace_store.current().server.shutdown_grace,
    ))
}

/// Loads and builds the config at `source` without serving it: a summary of its providers
/// and models, or every problem found (`switchyard check-config`).
pub fn check_config(source: &ConfigSource) -> Result<String, ConfigErrors> {
    let raw = crate::config::load(source)?;
    let snapshot = Snapshot::build(raw, &Shared::default()).map_err(|errors| ConfigErrors {
        origin: source.to_string(),
        errors,
    })?;
    Ok(snapshot.summary())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
