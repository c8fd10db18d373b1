//! Server-sent events: the one decoder for upstream streams and the one encoder for
//! client streams. Adapters never write SSE frames themselves.

use bytes::{BufMut, Bytes, BytesMut};

/// Decodes an upstream byte stream into SSE events. (sse-stream scans with memchr and
/// validates UTF-8 with SIMD; eventsource-stream's parser took an eighth of the gateway's
/// CPU in the streaming load scenario.)
pub use sse_stream::{Sse as Event, SseStream as Decoder};

/// The frame that ends a successful OpenAI stream.
pub const DONE: Bytes = Bytes::from_static(b"data: [DONE]\n\n");

/// Appends one `data:` frame around a JSON payload.
pub fn write_data_frame(buffer: &mut BytesMut, json: &[u8]) {
    buffer.reserve(json.len() + 8);
    buffer.put_slice(b"data: ");
    buffer.put_slice(json);
    buffer.put_slice(b"\n\n");
}

/// Appends one comment line (`: text`), which SSE clients ignore.
pub fn write_comment(buffer: &mut BytesMut, text: &[u8]) {
    buffer.reserve(text.len() + 4);
    buffer.put_slice(b": ");
    buffer.put_slice(text);
    buffer.put_slice(b"\n\n");
}
