//! Origins: what a route sends its requests to, built once per configuration.
//!
//! An HTTP origin owns its own connection pool (so each has its own timeouts
//! and trust roots); a directory origin is tower-http's `ServeDir`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::HeaderValue;
use http::uri::{Authority, Scheme};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tower_http::services::ServeDir;

use super::pool::OriginPool;
use crate::config::{self, Upstream};

// Built once per configuration and never moved on the hot path.
#[allow(clippy::large_enum_variant)]
pub enum Origin {
    Http(HttpOrigin),
    Dir(DirOrigin),
}

pub struct HttpOrigin {
    pub pool: Arc<OriginPool>,
    pub scheme: Scheme,
    pub authority: Authority,
    /// The origin's own authority, sent as `Host` when the route rewrites it.
    pub host_header: HeaderValue,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub label: Arc<str>,
}

pub struct DirOrigin {
    pub serve: ServeDir,
    pub dir: std::path::PathBuf,
    pub label: Arc<str>,
}

impl Origin {
    pub fn build(route: &config::Route) -> Result<Origin, String> {
        match &route.upstream {
            Upstream::Dir(dir) => Ok(Origin::Dir(DirOrigin {
                serve: ServeDir::new(dir).precompressed_br().precompressed_gzip(),
                dir: dir.clone(),
                label: route.upstream.to_string().into(),
            })),
            Upstream::Http { uri, tls } => {
                let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
                    return Err(format!("upstream {uri} has no scheme or authority"));
                };
                let roots = if *tls {
                    trust_roots(route.ca_file.as_deref())?
                } else {
                    RootCertStore::empty()
                };
                let address = http::Uri::builder()
                    .scheme(scheme.clone())
                    .authority(authority.clone())
                    .path_and_query("/")
                    .build()
                    .map_err(|e| format!("upstream {uri}: {e}"))?;
                let pool = OriginPool::new(
                    connector(roots, route.connect_timeout),
                    address,
                    512,
                    Duration::from_secs(60),
                    // Bounds the read buffer per upstream connection (hyper's
                    // default grows to ~400 KB on large bodies): memory per
                    // in-flight response stays independent of the page size.
                    64 * 1024,
                    route.connect_timeout,
                );
                Ok(Origin::Http(HttpOrigin {
                    pool,
                    scheme: scheme.clone(),
                    authority: authority.clone(),
                    host_header: HeaderValue::from_str(authority.as_str()).map_err(|_| {
                        format!("upstream authority {authority} is not a valid Host")
                    })?,
                    connect_timeout: route.connect_timeout,
                    response_timeout: route.response_timeout,
                    idle_timeout: route.idle_timeout,
                    label: format!("{scheme}://{authority}").into(),
                }))
            }
        }
    }

    pub fn label(&self) -> &Arc<str> {
        match self {
            Origin::Http(o) => &o.label,
            Origin::Dir(o) => &o.label,
        }
    }

    /// Readiness: can a TCP connection be opened to the origin, or does the directory exist?
    pub async fn probe(&self) -> Result<(), String> {
        match self {
            Origin::Dir(o) => match tokio::fs::metadata(&o.dir).await {
                Ok(m) if m.is_dir() => Ok(()),
                _ => Err(format!("{} is not a readable directory", o.label)),
            },
            Origin::Http(o) => {
                let port = o
                    .authority
                    .port_u16()
                    .unwrap_or(if o.scheme == Scheme::HTTPS { 443 } else { 80 });
                let host = o
                    .authority
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let connect = tokio::net::TcpStream::connect((host, port));
                match tokio::time::timeout(o.connect_timeout, connect).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("{}: {e}", o.label)),
                    Err(_) => Err(format!("{}: connect timed out", o.label)),
                }
            }
        }
    }
}

/// An HTTP/1.1 connector for `http://` and `https://` (rustls, `roots`),
/// with TCP_NODELAY and a timeout on the TCP connect. The TLS handshake is
/// not timed here: callers bound the whole connect (`OriginPool::connect`).
pub fn connector(roots: RootCertStore, connect_timeout: Duration) -> HttpsConnector<HttpConnector> {
    let tls_config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(connect_timeout));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp)
}

/// The system's trust roots (read once per process) plus an optional PEM bundle.
pub fn trust_roots(ca_file: Option<&std::path::Path>) -> Result<RootCertStore, String> {
    static SYSTEM: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    let system = SYSTEM.get_or_init(|| rustls_native_certs::load_native_certs().certs);
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(system.iter().cloned());
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("ca_file {} holds no certificates", path.display()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        }
    }
    Ok(roots)
}
