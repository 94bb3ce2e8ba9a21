//! TLS for the HTTPS listener: certificates loaded from PEM files (or a
//! generated dev certificate), chosen per connection by SNI.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;

use crate::config::{self, HostPattern};
use crate::files::{self, IfExists};

/// Builds the rustls server configuration: ALPN `h2` then `http/1.1`, a session
/// cache and (optionally) stateless tickets so returning clients resume cheaply.
/// Every certificate that cannot be used is reported, each by its key path.
pub fn server_config(
    tls: &config::Tls,
    create_dev_certificates: bool,
) -> Result<Arc<rustls::ServerConfig>, Vec<String>> {
    let provider = provider();
    let mut resolver = SniResolver::default();
    let mut problems = Vec::new();
    for c in &tls.certificates {
        if tls.dev_certificate && !(c.cert_file.exists() && c.key_file.exists()) {
            if !create_dev_certificates {
                continue;
            }
            if let Err(e) = write_dev_certificate(&c.cert_file, &c.key_file) {
                problems.push(format!("{}: {e}", c.entry));
                continue;
            }
        }
        match certified_key(c, &provider) {
            Ok(certified) => resolver.add(Arc::new(certified), &c.hosts),
            Err(e) => problems.push(e),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| vec![e.to_string()])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Our order, not the client's: see `provider`.
    config.ignore_client_order = true;
    config.session_storage = ServerSessionMemoryCache::new(8192);
    if tls.session_tickets {
        config.ticketer =
            rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| vec![e.to_string()])?;
        // One ticket per connection (rustls defaults to two): a browser uses one
        // per connection, and each extra ticket costs both ends a seal/open.
        config.send_tls13_tickets = 1;
    }
    Ok(Arc::new(config))
}

/// A certificate's chain and key, read from its files.
fn certified_key(
    c: &config::Certificate,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, String> {
    let entry = &c.entry;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.cert_file)
        .and_then(|iter| iter.collect())
        .map_err(|e| {
            format!(
                "{entry}.cert_file: cannot read certificate {}: {e}",
                c.cert_file.display()
            )
        })?;
    if chain.is_empty() {
        return Err(format!(
            "{entry}.cert_file: {} holds no certificate",
            c.cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&c.key_file).map_err(|e| {
        format!(
            "{entry}.key_file: cannot read private key {}: {e}",
            c.key_file.display()
        )
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        format!(
            "{entry}: {} and {} do not form a usable pair: {e}",
            c.cert_file.display(),
            c.key_file.display()
        )
    })
}

/// aws-lc-rs with the SHA-256 suites first. Every TLS 1.3 handshake (resumed
/// ones too) runs the HKDF key schedule in the suite's hash; SHA-256 runs on the
/// CPU's SHA extensions where SHA-384 has none, which made SHA-384 the largest
/// single cost of a handshake here (docs/decisions/0002-tls-provider.md).
fn provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::aws_lc_rs::{self as aws, cipher_suite as suite};
    rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            suite::TLS13_AES_128_GCM_SHA256,
            suite::TLS13_CHACHA20_POLY1305_SHA256,
            suite::TLS13_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ],
        ..aws::default_provider()
    }
}

/// Picks a certificate by SNI: exact name, then `*.` wildcard, then the first
/// configured certificate.
#[derive(Debug, Default)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    /// The default was named by a `"*"`, not taken for being first.
    default_named: bool,
}

impl SniResolver {
    fn add(&mut self, key: Arc<CertifiedKey>, hosts: &[HostPattern]) {
        // The default answers names no certificate lists: the first
        // certificate, unless a later one says `"*"`.
        if self.default.is_none() || (hosts.contains(&HostPattern::Any) && !self.default_named) {
            self.default = Some(key.clone());
            self.default_named = hosts.contains(&HostPattern::Any);
        }
        for host in hosts {
            match host {
                HostPattern::Exact(name) => {
                    self.exact
                        .entry(name.clone())
                        .or_insert_with(|| key.clone());
                }
                HostPattern::Wildcard(suffix) => {
                    self.wildcard
                        .entry(suffix.clone())
                        .or_insert_with(|| key.clone());
                }
                HostPattern::Any => {} // the default, above
            }
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let found = hello.server_name().and_then(|name| {
            let name = name.to_ascii_lowercase();
            self.exact.get(&name).cloned().or_else(|| {
                let dot = name.find('.')?;
                self.wildcard.get(&name[dot..]).cloned()
            })
        });
        found.or_else(|| self.default.clone())
    }
}

/// Writes a self-signed certificate for localhost (ECDSA P-256); the key file is
/// created readable by its owner only.
fn write_dev_certificate(cert_file: &Path, key_file: &Path) -> Result<(), String> {
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("cannot generate a dev certificate: {e}"))?;
    // Each file whole or not at all, the key first: a crash leaves no
    // truncated certificate for the next start to trip over.
    let write = |path: &Path, mode: u32, contents: &str| -> Result<(), String> {
        files::write_whole(path, contents.as_bytes(), mode, IfExists::Replace)
            .map(|_| ())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    write(key_file, 0o600, &generated.signing_key.serialize_pem())?;
    write(cert_file, 0o644, &generated.cert.pem())?;
    tracing::warn!(
        cert = %cert_file.display(),
        "generated a self-signed development certificate; do not use it in production"
    );
    Ok(())
}
