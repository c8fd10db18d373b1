//! The pooled upstream HTTP clients, shared by every provider and kept across reloads so
//! a reload never drops warm connections.
//!
//! hyper-util's pooled client over hyper-rustls (the OS trust store, via the platform
//! verifier): keep-alive, HTTP/1.1 or HTTP/2 as the server's ALPN chooses, TCP_NODELAY.
//! Requests carry a pre-built URI and header map, so nothing is parsed per request. It
//! never follows redirects: a redirect would carry the provider's key to wherever it
//! points. The connect timeout is a property of the connector, so there is one client per
//! distinct connect timeout (almost always exactly one).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Default)]
pub struct HttpClients {
    by_connect_timeout: Mutex<HashMap<Duration, HttpClient>>,
}

impl HttpClients {
    pub fn get(&self, connect_timeout: Duration) -> Result<HttpClient, String> {
        let mut clients = self
            .by_connect_timeout
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&connect_timeout) {
            return Ok(client.clone());
        }
        let client = build(connect_timeout)?;
        clients.insert(connect_timeout, client.clone());
        Ok(client)
    }
}

fn build(connect_timeout: Duration) -> Result<HttpClient, String> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    http.enforce_http(false);
    let https = HttpsConnectorBuilder::new()
        .try_with_platform_verifier()
        .map_err(|e| format!("cannot load the system's TLS trust store: {e}"))?
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https))
}
