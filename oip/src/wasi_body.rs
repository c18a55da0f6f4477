//! Reading a whole HTTP body from a `wasi:io` input stream, inside a component.

use wasi::io::streams::{InputStream, StreamError};

/// The most asked of the host in one read.
const BLOCK: u64 = 1 << 20;

/// A body's length from its `Content-Length` header values, if it declares one.
pub fn content_length(values: &[Vec<u8>]) -> Option<usize> {
    values.first().and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok())
}

/// Reads `stream` to its end into one buffer, reserved up front for `length` bytes (the body's
/// `Content-Length`) so that it is never regrown and copied; a length that cannot be reserved is only
/// a hint. Reads ask for up to 1 MiB at a time.
pub fn read_all(stream: &InputStream, length: Option<usize>) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    if let Some(n) = length {
        let _ = body.try_reserve_exact(n);
    }
    loop {
        match stream.blocking_read(BLOCK) {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return Ok(body),
            Err(StreamError::LastOperationFailed(e)) => return Err(e.to_debug_string()),
        }
    }
}

/// An incoming Spin request with its body read whole by [`read_all`]; a body that cannot be read is
/// a 400.
#[cfg(feature = "spin")]
pub fn read_request(incoming: spin_sdk::http::IncomingRequest) -> Result<spin_sdk::http::Request, crate::rest::Refusal> {
    let length = content_length(&incoming.headers().get(&"content-length".to_string()));
    let bad = |e: String| crate::rest::Refusal::new(400, format!("reading the request body: {e}"));
    let body = incoming.consume().map_err(|_| bad("it was already taken".into()))?;
    let stream = body.stream().map_err(|_| bad("its stream was already taken".into()))?;
    let data = read_all(&stream, length).map_err(bad)?;
    Ok(spin_sdk::http::Request::builder().method(incoming.method()).uri(incoming.uri()).headers(incoming.headers()).body(data).build())
}
