//! Starting and stopping a gateway: config store, app, listener, reload watcher. The
//! binary and the integration tests start gateways the same way.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::app::{self, App};
use crate::config::{ConfigErrors, ConfigSource};
use crate::reload::{self, ConfigStore};
use crate::server::{self, ServerOptions};

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
}

/// A gateway serving in the background.
pub struct Gateway {
    pub addr: SocketAddr,
    pub store: Arc<ConfigStore>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
    watcher: JoinHandle<()>,
}

impl Gateway {
    /// Loads the config, binds the listener and starts serving.
    pub async fn start(options: GatewayOptions) -> Result<Self, StartError> {
        let store = Arc::new(ConfigStore::open(options.config)?);
        let snapshot = store.current();
        let addr = options.listen.unwrap_or(snapshot.server.listen);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        let watcher = reload::watch(store.clone()).map_err(StartError::Watch)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let router = app::router(App::new(store.clone()));
        let options = ServerOptions {
            header_read_timeout: snapshot.server.header_read_timeout,
        };
        let grace_store = store.clone();
        let server = tokio::spawn(server::serve(
            listener,
            router,
            options,
            async move {
                let _ = stopped.await;
            },
            move || grace_store.current().server.shutdown_grace,
        ));
        tracing::info!(%addr, config = %store.source(), "switchyard listening");
        if snapshot.keys.has_dev_key() {
            tracing::warn!(
                "the development key {} is active: anyone who can reach the gateway can use it; replace it before exposing the gateway",
                crate::auth::DEV_KEY
            );
        }
        Ok(Self {
            addr,
            store,
            stop: Some(stop),
            server,
            watcher,
        })
    }

    /// Stops accepting, lets in-flight requests finish within the grace period, returns
    /// when done.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.watcher.abort();
        let _ = (&mut self.server).await;
    }
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
