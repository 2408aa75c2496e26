//! TLS settings for a listener: certificates by SNI name, the rustls `ServerConfig` (aws-lc-rs
//! provider, the six AEAD suites the record engine supports, ALPN, tickets, secret
//! extraction), and the hand-over of keys from rustls to the record engine.
//!
//! After the handshake the box takes the traffic keys out of rustls
//! (`dangerous_extract_secrets`) and drops the connection. TLS 1.3 KeyUpdate needs the traffic
//! secrets themselves, which extraction does not give: [`SecretLog`], rustls' key-log hook,
//! keeps them per client random until [`SecretLog::take`] collects them.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cutls_crypto::{CipherSuite, Secret, TrafficKeys};
use rustls::crypto::aws_lc_rs;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets, ServerConfig, SupportedCipherSuite};

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
    config.alpn_protocols = listener.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    // The box hands the connection over to the record engine: rustls must let go of the keys.
    config.enable_secret_extraction = true;
    config.key_log = secrets;
    // Resumption by tickets (stateless, so any poll loop can resume any session).
    config.ticketer = aws_lc_rs::Ticketer::new().map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    // 0-RTT stays off: early data would reach the backend before the handshake completes.
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

/// Keeps TLS 1.3 application traffic secrets from rustls' key-log hook until the session
/// collects them. Bounded: the oldest entries go first.
#[derive(Debug, Default)]
pub struct SecretLog {
    entries: Mutex<SecretEntries>,
}

#[derive(Debug, Default)]
struct SecretEntries {
    by_random: HashMap<[u8; 32], TrafficSecrets>,
    order: VecDeque<[u8; 32]>,
}

/// A session's TLS 1.3 application traffic secrets.
#[derive(Debug, Default, Clone)]
pub struct TrafficSecrets {
    pub client: Option<Vec<u8>>,
    pub server: Option<Vec<u8>>,
}

/// Handshakes in flight per log; far more than a poll loop runs at once.
const MAX_PENDING_SECRETS: usize = 65536;

impl SecretLog {
    /// Removes and returns the secrets logged for `client_random`.
    pub fn take(&self, client_random: &[u8; 32]) -> Option<TrafficSecrets> {
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let secrets = entries.by_random.remove(client_random)?;
        entries.order.retain(|random| random != client_random);
        Some(secrets)
    }
}

impl rustls::KeyLog for SecretLog {
    fn will_log(&self, label: &str) -> bool {
        matches!(label, "CLIENT_TRAFFIC_SECRET_0" | "SERVER_TRAFFIC_SECRET_0")
    }

    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        let Ok(random) = <[u8; 32]>::try_from(client_random) else { return };
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !entries.by_random.contains_key(&random) {
            if entries.order.len() >= MAX_PENDING_SECRETS {
                if let Some(oldest) = entries.order.pop_front() {
                    entries.by_random.remove(&oldest);
                }
            }
            entries.order.push_back(random);
        }
        let slot = entries.by_random.entry(random).or_default();
        match label {
            "CLIENT_TRAFFIC_SECRET_0" => slot.client = Some(secret.to_vec()),
            "SERVER_TRAFFIC_SECRET_0" => slot.server = Some(secret.to_vec()),
            _ => {}
        }
    }
}

/// What the record engine needs of a finished handshake, per direction.
#[derive(Debug)]
pub struct DirectionKeys {
    /// Sequence number of the next record.
    pub seq: u64,
    pub keys: TrafficKeys,
    /// TLS 1.3: the traffic secret, for KeyUpdate.
    pub secret: Option<Secret>,
}

#[derive(Debug)]
pub struct SessionKeys {
    pub suite: &'static CipherSuite,
    /// Client to box (rustls' rx).
    pub client: DirectionKeys,
    /// Box to client (rustls' tx).
    pub server: DirectionKeys,
}

#[derive(Debug, PartialEq, Eq)]
pub struct HandOverError(pub String);

impl fmt::Display for HandOverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HandOverError {}

/// Turns rustls' extracted secrets into record-engine keys. `suite` is the negotiated suite
/// (read before extraction consumes the connection); `secrets` the TLS 1.3 traffic secrets.
pub fn session_keys(
    suite: SupportedCipherSuite,
    extracted: ExtractedSecrets,
    secrets: Option<TrafficSecrets>,
) -> Result<SessionKeys, HandOverError> {
    let suite = CipherSuite::from_id(u16::from(suite.suite())).map_err(|e| HandOverError(e.to_string()))?;
    let convert = |(seq, traffic): (u64, ConnectionTrafficSecrets), secret: Option<Vec<u8>>| {
        let (key, iv) = match &traffic {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv }
            | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
            | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key.as_ref().to_vec(), iv.as_ref().to_vec()),
            _ => return Err(HandOverError("rustls extracted keys of an AEAD the engine does not know".into())),
        };
        let keys = TrafficKeys::new(suite.version, suite.aead, &key, &iv).map_err(|e| HandOverError(e.to_string()))?;
        let secret = match secret {
            Some(bytes) => Some(Secret::new(suite.hash, &bytes).map_err(|e| HandOverError(e.to_string()))?),
            None => None,
        };
        Ok(DirectionKeys { seq, keys, secret })
    };
    let secrets = secrets.unwrap_or_default();
    Ok(SessionKeys { suite, client: convert(extracted.rx, secrets.client)?, server: convert(extracted.tx, secrets.server)? })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn secret_log_keeps_and_hands_over() {
        use rustls::KeyLog;
        let log = SecretLog::default();
        assert!(log.will_log("SERVER_TRAFFIC_SECRET_0"));
        assert!(!log.will_log("CLIENT_HANDSHAKE_TRAFFIC_SECRET"));
        log.log("CLIENT_TRAFFIC_SECRET_0", &[1; 32], &[7; 32]);
        log.log("SERVER_TRAFFIC_SECRET_0", &[1; 32], &[8; 32]);
        let secrets = log.take(&[1; 32]).unwrap();
        assert_eq!(secrets.client.as_deref(), Some(&[7u8; 32][..]));
        assert_eq!(secrets.server.as_deref(), Some(&[8u8; 32][..]));
        assert!(log.take(&[1; 32]).is_none());
    }
}
