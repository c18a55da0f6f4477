//! Outbound OIP calls over `wasi:http/outgoing-handler`, with a timeout on each.

use std::io::Write;
use std::time::Duration;

use wasi::http::outgoing_handler;
use wasi::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme};

/// A segment's answer.
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Its `Inference-Header-Content-Length`, if any.
    pub header_length: Option<usize>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Answer {
    /// The message of an OIP error body, else the start of the body.
    pub fn message(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or_else(|| match String::from_utf8_lossy(&self.body).trim() {
                "" => "no message: its host failed it before it could answer (a trap, or its instance's memory limit: see the host's log)".into(),
                text => text.chars().take(200).collect(),
            })
    }
}

/// Which replica to try first: spread over `count` by the clock, since each request gets a fresh
/// instance with nothing remembered from the last.
pub fn spread(count: usize) -> usize {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    (nanos / 1000) as usize % count.max(1)
}

/// POSTs an encoded OIP request to `url` (`http[s]://authority/path`); the error says why nothing
/// usable came back (no connection, a timeout, a broken stream).
pub fn post(url: &str, request: &netless_oip::Encoded, timeout: Duration) -> Result<Answer, String> {
    send(url, request, timeout)?.answer()
}

/// A request sent, its answer not yet read: several can be in flight at once.
pub struct Pending {
    future: outgoing_handler::FutureIncomingResponse,
    sent: Result<(), String>,
}

/// Sends an encoded OIP request to `url` without waiting for the answer.
pub fn send(url: &str, request: &netless_oip::Encoded, timeout: Duration) -> Result<Pending, String> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("http", rest)) => (Scheme::Http, rest),
        Some(("https", rest)) => (Scheme::Https, rest),
        _ => return Err(format!("`{url}` is not an http:// or https:// URL")),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut headers = vec![("content-type".to_string(), b"application/octet-stream".to_vec())];
    if let Some(n) = request.header_length {
        headers.push((netless_oip::HEADER_LENGTH.to_string(), n.to_string().into_bytes()));
    }
    let headers = Fields::from_list(&headers).map_err(|e| format!("building the request headers: {e:?}"))?;
    let outgoing = OutgoingRequest::new(headers);
    let ok = outgoing.set_method(&Method::Post).is_ok()
        && outgoing.set_scheme(Some(&scheme)).is_ok()
        && outgoing.set_authority(Some(authority)).is_ok()
        && outgoing.set_path_with_query(Some(path)).is_ok();
    if !ok {
        return Err(format!("`{url}` is not a valid request URL"));
    }
    let nanos = Some(timeout.as_nanos().min(u64::MAX as u128) as u64);
    let options = RequestOptions::new();
    // A host may not support some timeouts; the deadline still bounds the request through the others.
    let _ = options.set_connect_timeout(nanos);
    let _ = options.set_first_byte_timeout(nanos);
    let _ = options.set_between_bytes_timeout(nanos);
    let body = outgoing.body().map_err(|_| "the request body was already taken".to_string())?;
    let future = outgoing_handler::handle(outgoing, Some(options)).map_err(|e| format!("{e:?}"))?;
    let sent = (|| {
        let mut stream = body.write().map_err(|_| "the request body stream was already taken".to_string())?;
        stream.write_all(&request.body).map_err(|e| format!("sending the request: {e}"))?;
        stream.flush().map_err(|e| format!("sending the request: {e}"))?;
        drop(stream);
        OutgoingBody::finish(body, None).map_err(|e| format!("finishing the request: {e:?}"))
    })();
    Ok(Pending { future, sent })
}

impl Pending {
    /// Waits for the answer and reads it whole.
    pub fn answer(self) -> Result<Answer, String> {
        let Pending { future, sent } = self;
        // The host's reason (refused, denied, timed out) says more than a broken body stream.
        future.subscribe().block();
        let response = match future.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(e))) => return Err(format!("{e:?}")),
            Some(Err(())) | None => return Err(sent.err().unwrap_or_else(|| "the response was lost".to_string())),
        };
        sent?;
        read(response)
    }
}

fn read(response: wasi::http::types::IncomingResponse) -> Result<Answer, String> {
    let status = response.status();
    let header_length = response
        .headers()
        .get(&netless_oip::HEADER_LENGTH.to_string())
        .first()
        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok());
    let length = netless_oip::wasi_body::content_length(&response.headers().get(&"content-length".to_string()));
    let incoming = response.consume().map_err(|_| "the response body was already taken".to_string())?;
    let body = {
        let stream = incoming.stream().map_err(|_| "the response body stream was already taken".to_string())?;
        netless_oip::wasi_body::read_all(&stream, length).map_err(|e| format!("reading the answer: {e}"))?
    };
    Ok(Answer { status, header_length, body })
}
