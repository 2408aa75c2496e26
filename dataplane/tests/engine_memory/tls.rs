//! Certificates and rustls configurations: a test CA and an Ed25519 leaf for `localhost`, made
//! once per test process with rcgen; a server configuration as the control plane builds it;
//! clients pinned to one suite and version.
//!
//! Why Ed25519: the TLS 1.2 ECDHE-ECDSA suites accept it (RFC 8422), and its signatures are
//! always 64 bytes, where DER-encoded ECDSA signatures vary by a byte or two from run to run.
//! With it every handshake message has the same length each run, so segment boundaries and
//! the whole frame trace (sizes, sequence numbers, times) repeat exactly; only the bytes that
//! rustls draws at random differ.

use std::sync::{Arc, OnceLock};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};

pub struct Pki {
    pub ca: CertificateDer<'static>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Vec<u8>,
}

pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        // Fixed keys and serial numbers: the certificates (and so the server's flight) are the
        // same bytes in every run, which the golden replays need.
        let ca_key = ed25519_key([0xca; 32]);
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.distinguished_name.push(DnType::CommonName, "cutls engine_memory test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.serial_number = Some(rcgen::SerialNumber::from(1u64));
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = ed25519_key([0x1e; 32]);
        let mut leaf_params = CertificateParams::new(vec!["localhost".to_string()]).expect("leaf params");
        leaf_params.distinguished_name.push(DnType::CommonName, "localhost");
        leaf_params.serial_number = Some(rcgen::SerialNumber::from(2u64));
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf certificate");
        Pki {
            ca: ca_cert.der().clone(),
            chain: vec![leaf.der().clone(), ca_cert.der().clone()],
            key: leaf_key.serialize_der(),
        }
    })
}

/// An Ed25519 key from a fixed seed (PKCS#8 v1: the RFC 8410 prefix, then the seed).
fn ed25519_key(seed: [u8; 32]) -> KeyPair {
    let mut pkcs8 = vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    pkcs8.extend_from_slice(&seed);
    let der = PrivatePkcs8KeyDer::from(pkcs8);
    KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519).expect("Ed25519 key")
}

/// The box's TLS configuration with every random draw taken from a seeded generator and a
/// deterministic X25519: the same client frames then get the same server frames, every run.
/// Ed25519 signatures are deterministic already. No ticketer (its keys would be random).
pub fn deterministic_server_config(secrets: Arc<dyn rustls::KeyLog>, seed: u64) -> Arc<ServerConfig> {
    let random: &'static SeededRandom = Box::leak(Box::new(SeededRandom(std::sync::Mutex::new(seed | 1))));
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.secure_random = random;
    provider.kx_groups = vec![Box::leak(Box::new(DeterministicX25519 { random }))];
    box_config(provider, secrets)
}

/// xorshift64*: a test generator, not a secure one.
#[derive(Debug)]
struct SeededRandom(std::sync::Mutex<u64>);

impl rustls::crypto::SecureRandom for SeededRandom {
    fn fill(&self, buffer: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
        let mut state = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for chunk in buffer.chunks_mut(8) {
            *state ^= *state >> 12;
            *state ^= *state << 25;
            *state ^= *state >> 27;
            let value = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&value[..chunk.len()]);
        }
        Ok(())
    }
}

/// X25519 whose ephemeral private keys come from [`SeededRandom`].
#[derive(Debug)]
struct DeterministicX25519 {
    random: &'static SeededRandom,
}

struct X25519Exchange {
    private: aws_lc_rs::agreement::PrivateKey,
    public: Vec<u8>,
}

impl rustls::crypto::SupportedKxGroup for DeterministicX25519 {
    fn start(&self) -> Result<Box<dyn rustls::crypto::ActiveKeyExchange>, rustls::Error> {
        use rustls::crypto::SecureRandom;
        let mut bytes = [0u8; 32];
        self.random.fill(&mut bytes).map_err(|_| rustls::Error::FailedToGetRandomBytes)?;
        let private = aws_lc_rs::agreement::PrivateKey::from_private_key(&aws_lc_rs::agreement::X25519, &bytes)
            .map_err(|_| rustls::Error::General("X25519 key".into()))?;
        let public = private.compute_public_key().map_err(|_| rustls::Error::General("X25519 public key".into()))?;
        Ok(Box::new(X25519Exchange { private, public: public.as_ref().to_vec() }))
    }

    fn name(&self) -> rustls::NamedGroup {
        rustls::NamedGroup::X25519
    }
}

impl rustls::crypto::ActiveKeyExchange for X25519Exchange {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<rustls::crypto::SharedSecret, rustls::Error> {
        let peer = aws_lc_rs::agreement::UnparsedPublicKey::new(&aws_lc_rs::agreement::X25519, peer);
        aws_lc_rs::agreement::agree(&self.private, peer, rustls::Error::General("X25519 agreement".into()), |secret| {
            Ok(rustls::crypto::SharedSecret::from(secret))
        })
    }

    fn pub_key(&self) -> &[u8] {
        &self.public
    }

    fn group(&self) -> rustls::NamedGroup {
        rustls::NamedGroup::X25519
    }
}

/// The box's TLS configuration, as `cutls_control::tls::server_config` makes it: both versions,
/// secret extraction on, the key log that hands TLS 1.3 traffic secrets to the engine.
pub fn server_config(secrets: Arc<dyn rustls::KeyLog>) -> Arc<ServerConfig> {
    box_config(rustls::crypto::aws_lc_rs::default_provider(), secrets)
}

/// What both configurations share: the test PKI's certificate, both versions, ALPN
/// http/1.1, secret extraction and the key log on, no early data.
fn box_config(provider: rustls::crypto::CryptoProvider, secrets: Arc<dyn rustls::KeyLog>) -> Arc<ServerConfig> {
    let pki = pki();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key.clone()));
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(pki.chain.clone(), key)
        .expect("server certificate");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.enable_secret_extraction = true;
    config.key_log = secrets;
    config.max_early_data_size = 0;
    Arc::new(config)
}

/// The cipher suites the tests force, one per client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    Tls13Aes128Gcm,
    Tls13Aes256Gcm,
    Tls13Chacha20,
    Tls12EcdsaAes128Gcm,
    Tls12EcdsaAes256Gcm,
    Tls12EcdsaChacha20,
}

impl Suite {
    pub fn id(self) -> u16 {
        match self {
            Suite::Tls13Aes128Gcm => 0x1301,
            Suite::Tls13Aes256Gcm => 0x1302,
            Suite::Tls13Chacha20 => 0x1303,
            Suite::Tls12EcdsaAes128Gcm => 0xc02b,
            Suite::Tls12EcdsaAes256Gcm => 0xc02c,
            Suite::Tls12EcdsaChacha20 => 0xcca9,
        }
    }

    pub fn tls13(self) -> bool {
        matches!(self, Suite::Tls13Aes128Gcm | Suite::Tls13Aes256Gcm | Suite::Tls13Chacha20)
    }

    /// TLS 1.2 AES-GCM records start with an 8-byte explicit nonce.
    pub fn explicit_nonce_len(self) -> usize {
        match self {
            Suite::Tls12EcdsaAes128Gcm | Suite::Tls12EcdsaAes256Gcm => 8,
            _ => 0,
        }
    }
}

/// A client that offers only `suite` (and so only its version).
pub fn client_config(suite: Suite) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(pki().ca.clone()).expect("root");
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.retain(|s| u16::from(s.suite()) == suite.id());
    assert_eq!(provider.cipher_suites.len(), 1, "{suite:?} is not in the provider");
    let versions: &[&SupportedProtocolVersion] =
        if suite.tls13() { &[&rustls::version::TLS13] } else { &[&rustls::version::TLS12] };
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}
