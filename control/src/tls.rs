//! TLS settings for a listener: certificates by SNI name, the rustls `ServerConfig` (aws-lc-rs
//! provider, the six AEAD suites the record engine supports, ALPN, tickets, secret
//! extraction), and the hand-over of keys from rustls to the record engine.
//!
//! The hand-over of keys from rustls to the record engine lives in the dataplane
//! (`cutls_dataplane::session::handover`), which does it; it is re-exported here.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use cutls_crypto::CipherSuite;
pub use cutls_dataplane::session::handover::{session_keys, DirectionKeys, HandOverError, SecretLog, SessionKeys, TrafficSecrets};
use rustls::crypto::aws_lc_rs;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::{CertificateFiles, Listener};

#[derive(Debug)]
pub enum TlsSetupError {
    /// A certificate or key file could not be read or parsed.
    File { path: PathBuf, message: String },
    /// rustls refused the combination (e.g. a key that does not match its certificate).
    Rustls(String),
}

impl fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsSetupError::File { path, message } => write!(f, "{}: {message}", path.display()),
            TlsSetupError::Rustls(message) => write!(f, "TLS configuration: {message}"),
        }
    }
}

impl std::error::Error for TlsSetupError {}

/// The crypto provider: aws-lc-rs, limited to the suites the record engine can take over.
/// Key exchange groups are the provider's defaults (X25519MLKEM768, X25519, P-256, P-384).
pub fn provider() -> CryptoProvider {
    let mut provider = aws_lc_rs::default_provider();
    provider.cipher_suites.retain(|suite| CipherSuite::from_id(u16::from(suite.suite())).is_ok());
    provider
}

/// Loads a certificate chain and its private key (PEM).
pub fn load_certified_key(files: &CertificateFiles, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsSetupError> {
    let file_error = |path: &PathBuf, message: String| TlsSetupError::File { path: path.clone(), message };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.chain)
        .map_err(|e| file_error(&files.chain, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(&files.chain, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error(&files.chain, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_error(&files.key, e.to_string()))?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    Ok(Arc::new(certified))
}

/// Picks a certificate by SNI: exact name, then `*.` wildcard of the parent, then the default.
#[derive(Debug, Default)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    pub fn add(&mut self, names: &[String], key: Arc<CertifiedKey>) {
        for name in names {
            match name.strip_prefix("*.") {
                Some(parent) => self.wildcard.insert(parent.to_ascii_lowercase(), key.clone()),
                None => self.exact.insert(name.to_ascii_lowercase(), key.clone()),
            };
        }
    }

    pub fn set_default(&mut self, key: Arc<CertifiedKey>) {
        self.default = Some(key);
    }

    /// The certificate for `server_name` (None: no SNI).
    pub fn lookup(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = server_name.map(str::to_ascii_lowercase) {
            if let Some(key) = self.exact.get(&name) {
                return Some(key.clone());
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(key) = self.wildcard.get(parent) {
                    return Some(key.clone());
                }
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(client_hello.server_name())
    }
}

/// The rustls server configuration of a listener.
pub fn server_config(listener: &Listener, secrets: Arc<SecretLog>) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = Arc::new(provider());
    let mut resolver = SniResolver::default();
    for (index, files) in listener.certificates.iter().enumerate() {
        let key = load_certified_key(files, &provider)?;
        resolver.add(&files.names, key.clone());
        if listener.default_certificate == Some(index) {
            resolver.set_default(key);
        }
    }
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = alpn_protocols(&listener.alpn);
    // The box hands the connection over to the record engine: rustls must let go of the keys.
    config.enable_secret_extraction = true;
    config.key_log = secrets;
    // Resumption by tickets (stateless, so any poll loop can resume any session).
    config.ticketer = aws_lc_rs::Ticketer::new().map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    // 0-RTT stays off: early data would reach the backend before the handshake completes.
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

/// The ALPN list rustls offers: the listener's, and `http/1.0` after `http/1.1` when that is
/// configured, since an HTTP/1.1 server serves HTTP/1.0 clients (`curl -0` offers only
/// `http/1.0`; without this rustls would refuse it with `no_application_protocol`, where nginx
/// serves it).
fn alpn_protocols(configured: &[String]) -> Vec<Vec<u8>> {
    let mut protocols: Vec<Vec<u8>> = configured.iter().map(|p| p.as_bytes().to_vec()).collect();
    let has = |name: &[u8], list: &[Vec<u8>]| list.iter().any(|p| p == name);
    if has(b"http/1.1", &protocols) && !has(b"http/1.0", &protocols) {
        protocols.push(b"http/1.0".to_vec());
    }
    protocols
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_1_1_listeners_also_take_http_1_0() {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let bytes = |list: &[&str]| list.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
        assert_eq!(alpn_protocols(&names(&["h2", "http/1.1"])), bytes(&["h2", "http/1.1", "http/1.0"]));
        assert_eq!(alpn_protocols(&names(&["h2"])), bytes(&["h2"]));
        assert_eq!(alpn_protocols(&names(&["http/1.0", "http/1.1"])), bytes(&["http/1.0", "http/1.1"]));
        assert!(alpn_protocols(&[]).is_empty());
    }

    #[test]
    fn provider_keeps_only_engine_suites() {
        let provider = provider();
        let ids: Vec<u16> = provider.cipher_suites.iter().map(|s| u16::from(s.suite())).collect();
        assert_eq!(ids.len(), 9, "{ids:04x?}");
        for id in [0x1301, 0x1302, 0x1303, 0xc02b, 0xc02c, 0xc02f, 0xc030, 0xcca8, 0xcca9] {
            assert!(ids.contains(&id), "{id:04x} missing from {ids:04x?}");
        }
        let groups: Vec<String> = provider.kx_groups.iter().map(|g| format!("{:?}", g.name())).collect();
        assert!(groups.iter().any(|g| g.contains("MLKEM")), "{groups:?}");
    }

}
