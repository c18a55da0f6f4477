//! Outbound requests of a component: to `<id>.spin.internal`, handed to that component in process
//! (Spin's service chaining); elsewhere, sent over the network if `allowed_outbound_hosts` lets them.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::SpinApp;

/// The host suffix of service chaining.
const INTERNAL: &str = ".spin.internal";

/// One `allowed_outbound_hosts` entry: `scheme://host[:port]`, where each part may be `*` and the
/// host may be `*.domain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    scheme: String,
    host: String,
    port: Option<String>,
}

impl HostPattern {
    /// Parses an entry (variables already expanded).
    pub fn parse(entry: &str) -> Result<HostPattern, String> {
        let (scheme, rest) = entry.split_once("://").ok_or_else(|| format!("`{entry}` is not scheme://host[:port]"))?;
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') {
            return Err(format!("`{entry}` is not scheme://host[:port] (no path allowed)"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port.to_string())),
            None => (rest, None),
        };
        Ok(HostPattern { scheme: scheme.to_string(), host: host.to_string(), port })
    }

    /// Whether a request to `scheme://host:port` is allowed by this entry; an entry without a port
    /// allows the scheme's default port.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let scheme_ok = self.scheme == "*" || self.scheme == scheme;
        let host_ok = match self.host.strip_prefix("*.") {
            _ if self.host == "*" => true,
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => self.host == host,
        };
        let default_port = match scheme {
            "https" => 443,
            _ => 80,
        };
        let port_ok = match &self.port {
            Some(p) if p == "*" => true,
            Some(p) => p.parse() == Ok(port),
            None => port == default_port,
        };
        scheme_ok && host_ok && port_ok
    }
}

/// The hooks of one request's store: where its outbound requests go.
pub struct Hooks {
    /// The app, for chained requests.
    pub app: Arc<SpinApp>,
    /// The calling component.
    pub component: String,
    /// Its `allowed_outbound_hosts`.
    pub allowed: Arc<Vec<HostPattern>>,
    /// The deadline of the request it serves; chained requests share it.
    pub deadline: Instant,
}

type Sent = Result<(axum::http::Response<WasiBody>, Box<dyn Future<Output = Result<(), Error>> + Send>), Error>;

impl WasiHttpHooks for Hooks {
    fn send_request(&mut self, request: axum::http::Request<WasiBody>, options: Option<RequestOptions>, fut: Box<dyn Future<Output = Result<(), Error>> + Send>) -> Box<dyn Future<Output = Sent> + Send> {
        drop(fut);
        let uri = request.uri().clone();
        let scheme = uri.scheme_str().unwrap_or("http").to_string();
        let host = uri.host().unwrap_or_default().to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
        let allowed = self.allowed.iter().any(|p| p.allows(&scheme, &host, port));
        if !allowed {
            tracing::warn!(component = %self.component, %uri, "outbound request denied: not in allowed_outbound_hosts");
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        let timeout = options.as_ref().and_then(|o| o.first_byte_timeout);
        let Some(target) = host.strip_suffix(INTERNAL).map(str::to_string) else {
            return Box::new(async move {
                let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
                Ok((response.map(http_body_util::BodyExt::boxed_unsync), Box::new(io) as Box<dyn Future<Output = _> + Send>))
            });
        };
        let app = self.app.clone();
        let deadline = self.deadline;
        Box::new(async move {
            let call = app.handle(&target, request, deadline);
            let response = match timeout {
                Some(t) => tokio::time::timeout(t, call).await.map_err(|_| Error::ConnectionReadTimeout)?,
                None => call.await,
            };
            Ok((response, Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_like_spins() {
        let internal = HostPattern::parse("http://*.spin.internal").unwrap();
        assert!(internal.allows("http", "seg0.spin.internal", 80));
        assert!(!internal.allows("http", "example.com", 80));
        let exact = HostPattern::parse("http://10.0.0.2:8081").unwrap();
        assert!(exact.allows("http", "10.0.0.2", 8081));
        assert!(!exact.allows("http", "10.0.0.2", 8082));
        let any = HostPattern::parse("*://*:*").unwrap();
        assert!(any.allows("https", "x", 1));
        assert!(HostPattern::parse("example.com").is_err());
        assert!(HostPattern::parse("http://a/b").is_err());
    }
}
