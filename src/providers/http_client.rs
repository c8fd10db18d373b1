//! The pooled upstream HTTP clients, shared by every provider and kept across reloads so
//! a reload never drops warm connections.
//!
//! reqwest fixes the connect timeout per client, so there is one client per distinct
//! connect timeout (almost always exactly one). Each is keep-alive, HTTP/1.1 and HTTP/2
//! (negotiated by ALPN over rustls), TCP_NODELAY, and never follows redirects: a redirect
//! would carry the provider's key to wherever it points.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
pub struct HttpClients {
    by_connect_timeout: Mutex<HashMap<Duration, reqwest::Client>>,
}

impl HttpClients {
    pub fn get(&self, connect_timeout: Duration) -> Result<reqwest::Client, String> {
        let mut clients = self
            .by_connect_timeout
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&connect_timeout) {
            return Ok(client.clone());
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        clients.insert(connect_timeout, client.clone());
        Ok(client)
    }
}
