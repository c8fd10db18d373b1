//! Server-sent events: the one decoder for upstream streams and the one encoder for
//! client streams. Adapters never write SSE frames themselves.

use bytes::{BufMut, Bytes, BytesMut};
use eventsource_stream::Eventsource;
use futures_util::Stream;

pub use eventsource_stream::EventStream;

/// Decodes an upstream byte stream into SSE events.
pub fn decode<S, B, E>(bytes: S) -> EventStream<S>
where
    S: Stream<Item = Result<B, E>> + Sized,
    B: AsRef<[u8]>,
{
    bytes.eventsource()
}

/// The frame that ends a successful OpenAI stream.
pub const DONE: Bytes = Bytes::from_static(b"data: [DONE]\n\n");

/// One `data:` frame around a JSON payload, written in a single buffer so it leaves in
/// one write.
pub fn data_frame(json: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(json.len() + 8);
    frame.put_slice(b"data: ");
    frame.put_slice(json);
    frame.put_slice(b"\n\n");
    frame.freeze()
}
