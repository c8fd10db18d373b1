//! The HTTP edge: routes, body reading and parsing, hygiene, the SSE relay to clients, and
//! the byte-level guard on incoming connections.

pub mod admin;
pub mod body;
pub mod connection_guard;
pub mod handlers;
pub mod hygiene;
pub mod parse;
pub mod relay;
pub mod request_id;
