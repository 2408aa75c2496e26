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
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.distinguished_name.push(DnType::CommonName, "cutls engine_memory test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("leaf key");
        let mut leaf_params = CertificateParams::new(vec!["localhost".to_string()]).expect("leaf params");
        leaf_params.distinguished_name.push(DnType::CommonName, "localhost");
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf certificate");
        Pki {
            ca: ca_cert.der().clone(),
            chain: vec![leaf.der().clone(), ca_cert.der().clone()],
            key: leaf_key.serialize_der(),
        }
    })
}

/// The box's TLS configuration, as `cutls_control::tls::server_config` makes it: both versions,
/// secret extraction on, the key log that hands TLS 1.3 traffic secrets to the engine.
pub fn server_config(secrets: Arc<dyn rustls::KeyLog>) -> Arc<ServerConfig> {
    let pki = pki();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key.clone()));
    let mut config = ServerConfig::builder_with_provider(provider)
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
