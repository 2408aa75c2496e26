//! Cipher suites: which ones the record engine supports, and the names of the ones it does not.
//!
//! The engine supports the six AEAD suites of TLS 1.2 and 1.3 that use AES-GCM or
//! ChaCha20-Poly1305. Every other suite is an [`UnsupportedSuite`] error that names it, so an
//! operator reading a log or `cutls decrypt` output sees `unsupported: TLS_RSA_WITH_AES_128_CCM_8`
//! rather than a number.

use core::fmt;

/// The TLS protocol version of a record stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    Tls12,
    Tls13,
}

impl ProtocolVersion {
    /// The version as it appears on the wire (0x0303 for TLS 1.2, 0x0304 for TLS 1.3).
    pub fn wire_value(self) -> u16 {
        match self {
            ProtocolVersion::Tls12 => 0x0303,
            ProtocolVersion::Tls13 => 0x0304,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ProtocolVersion::Tls12 => "TLSv1.2",
            ProtocolVersion::Tls13 => "TLSv1.3",
        }
    }
}

/// The AEAD algorithm that protects records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AeadAlgorithm {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl AeadAlgorithm {
    pub fn key_len(self) -> usize {
        match self {
            AeadAlgorithm::Aes128Gcm => 16,
            AeadAlgorithm::Aes256Gcm | AeadAlgorithm::Chacha20Poly1305 => 32,
        }
    }

    /// Length of the per-record nonce input (the TLS 1.3 `iv`, or the TLS 1.2 `client_write_IV`
    /// in the key block: 4 bytes of salt for GCM, 12 for ChaCha20-Poly1305).
    pub fn iv_len(self, version: ProtocolVersion) -> usize {
        match (self, version) {
            (AeadAlgorithm::Chacha20Poly1305, _) | (_, ProtocolVersion::Tls13) => 12,
            (_, ProtocolVersion::Tls12) => 4,
        }
    }

    /// Whether the AES-GCM confidentiality limit (RFC 8446 section 5.5) applies.
    pub fn is_aes_gcm(self) -> bool {
        matches!(self, AeadAlgorithm::Aes128Gcm | AeadAlgorithm::Aes256Gcm)
    }

    pub fn name(self) -> &'static str {
        match self {
            AeadAlgorithm::Aes128Gcm => "AES-128-GCM",
            AeadAlgorithm::Aes256Gcm => "AES-256-GCM",
            AeadAlgorithm::Chacha20Poly1305 => "CHACHA20-POLY1305",
        }
    }
}

/// The hash of a suite: the TLS 1.3 key schedule and the TLS 1.2 PRF use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlgorithm {
    Sha256,
    Sha384,
}

impl HashAlgorithm {
    pub fn output_len(self) -> usize {
        match self {
            HashAlgorithm::Sha256 => 32,
            HashAlgorithm::Sha384 => 48,
        }
    }
}

/// A supported cipher suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CipherSuite {
    pub id: u16,
    pub name: &'static str,
    pub version: ProtocolVersion,
    pub aead: AeadAlgorithm,
    pub hash: HashAlgorithm,
}

macro_rules! suite {
    ($id:expr, $name:expr, $version:ident, $aead:ident, $hash:ident) => {
        CipherSuite {
            id: $id,
            name: $name,
            version: ProtocolVersion::$version,
            aead: AeadAlgorithm::$aead,
            hash: HashAlgorithm::$hash,
        }
    };
}

/// Every suite cutls decrypts: the TLS 1.3 AEAD suites, and TLS 1.2 ECDHE (RSA and ECDSA),
/// DHE-RSA and RSA key exchange with AES-GCM or ChaCha20-Poly1305. The record layer of DHE-DSS,
/// static ECDH and PSK suites would be the same, but the project does not offer them (they are
/// reported as unsupported, by name).
pub static SUPPORTED_SUITES: &[CipherSuite] = &[
    suite!(0x1301, "TLS_AES_128_GCM_SHA256", Tls13, Aes128Gcm, Sha256),
    suite!(0x1302, "TLS_AES_256_GCM_SHA384", Tls13, Aes256Gcm, Sha384),
    suite!(0x1303, "TLS_CHACHA20_POLY1305_SHA256", Tls13, Chacha20Poly1305, Sha256),
    suite!(0xc02b, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", Tls12, Aes128Gcm, Sha256),
    suite!(0xc02c, "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", Tls12, Aes256Gcm, Sha384),
    suite!(0xc02f, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", Tls12, Aes128Gcm, Sha256),
    suite!(0xc030, "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", Tls12, Aes256Gcm, Sha384),
    suite!(0x009e, "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256", Tls12, Aes128Gcm, Sha256),
    suite!(0x009f, "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384", Tls12, Aes256Gcm, Sha384),
    suite!(0x009c, "TLS_RSA_WITH_AES_128_GCM_SHA256", Tls12, Aes128Gcm, Sha256),
    suite!(0x009d, "TLS_RSA_WITH_AES_256_GCM_SHA384", Tls12, Aes256Gcm, Sha384),
    suite!(0xcca8, "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", Tls12, Chacha20Poly1305, Sha256),
    suite!(0xcca9, "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", Tls12, Chacha20Poly1305, Sha256),
    suite!(0xccaa, "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256", Tls12, Chacha20Poly1305, Sha256),
];

/// A suite the engine does not support, by its IANA number and name when the name is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnsupportedSuite {
    pub id: u16,
    pub name: Option<&'static str>,
}

impl fmt::Display for UnsupportedSuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name {
            Some(name) => write!(f, "unsupported: {name} (0x{:04x})", self.id),
            None => write!(f, "unsupported: suite 0x{:04x}", self.id),
        }
    }
}

impl std::error::Error for UnsupportedSuite {}

impl CipherSuite {
    /// The supported suite with IANA number `id`, or an error naming it.
    pub fn from_id(id: u16) -> Result<&'static CipherSuite, UnsupportedSuite> {
        SUPPORTED_SUITES
            .iter()
            .find(|suite| suite.id == id)
            .ok_or(UnsupportedSuite { id, name: suite_name(id) })
    }

    /// The supported suite named `name` (IANA or OpenSSL spelling), for key logs and configs.
    pub fn from_name(name: &str) -> Option<&'static CipherSuite> {
        SUPPORTED_SUITES.iter().find(|suite| suite.name.eq_ignore_ascii_case(name))
    }
}

/// The IANA name of any suite this table knows, supported or not.
pub fn suite_name(id: u16) -> Option<&'static str> {
    if let Some(suite) = SUPPORTED_SUITES.iter().find(|suite| suite.id == id) {
        return Some(suite.name);
    }
    OTHER_SUITE_NAMES.iter().find(|(known, _)| *known == id).map(|(_, name)| *name)
}

/// Names of suites the engine does not support but may meet in captures, so that they are
/// reported by name (RFC 5246, 5288, 5289, 6655, 7251, 8446, and the common legacy ones).
static OTHER_SUITE_NAMES: &[(u16, &str)] = &[
    (0x0000, "TLS_NULL_WITH_NULL_NULL"),
    (0x0001, "TLS_RSA_WITH_NULL_MD5"),
    (0x0002, "TLS_RSA_WITH_NULL_SHA"),
    (0x0004, "TLS_RSA_WITH_RC4_128_MD5"),
    (0x0005, "TLS_RSA_WITH_RC4_128_SHA"),
    (0x000a, "TLS_RSA_WITH_3DES_EDE_CBC_SHA"),
    (0x0016, "TLS_DHE_RSA_WITH_3DES_EDE_CBC_SHA"),
    (0x002f, "TLS_RSA_WITH_AES_128_CBC_SHA"),
    (0x0032, "TLS_DHE_DSS_WITH_AES_128_CBC_SHA"),
    (0x0033, "TLS_DHE_RSA_WITH_AES_128_CBC_SHA"),
    (0x0035, "TLS_RSA_WITH_AES_256_CBC_SHA"),
    (0x0038, "TLS_DHE_DSS_WITH_AES_256_CBC_SHA"),
    (0x0039, "TLS_DHE_RSA_WITH_AES_256_CBC_SHA"),
    (0x003b, "TLS_RSA_WITH_NULL_SHA256"),
    (0x003c, "TLS_RSA_WITH_AES_128_CBC_SHA256"),
    (0x003d, "TLS_RSA_WITH_AES_256_CBC_SHA256"),
    (0x0040, "TLS_DHE_DSS_WITH_AES_128_CBC_SHA256"),
    (0x0041, "TLS_RSA_WITH_CAMELLIA_128_CBC_SHA"),
    (0x0045, "TLS_DHE_RSA_WITH_CAMELLIA_128_CBC_SHA"),
    (0x0067, "TLS_DHE_RSA_WITH_AES_128_CBC_SHA256"),
    (0x006a, "TLS_DHE_DSS_WITH_AES_256_CBC_SHA256"),
    (0x006b, "TLS_DHE_RSA_WITH_AES_256_CBC_SHA256"),
    (0x0084, "TLS_RSA_WITH_CAMELLIA_256_CBC_SHA"),
    (0x0088, "TLS_DHE_RSA_WITH_CAMELLIA_256_CBC_SHA"),
    (0x008c, "TLS_PSK_WITH_AES_128_CBC_SHA"),
    (0x008d, "TLS_PSK_WITH_AES_256_CBC_SHA"),
    (0x0096, "TLS_RSA_WITH_SEED_CBC_SHA"),
    (0x00a0, "TLS_DH_RSA_WITH_AES_128_GCM_SHA256"),
    (0x00a1, "TLS_DH_RSA_WITH_AES_256_GCM_SHA384"),
    (0x00a4, "TLS_DH_DSS_WITH_AES_128_GCM_SHA256"),
    (0x00a5, "TLS_DH_DSS_WITH_AES_256_GCM_SHA384"),
    (0x00a6, "TLS_DH_anon_WITH_AES_128_GCM_SHA256"),
    (0x00a7, "TLS_DH_anon_WITH_AES_256_GCM_SHA384"),
    (0x00ae, "TLS_PSK_WITH_AES_128_CBC_SHA256"),
    (0x00af, "TLS_PSK_WITH_AES_256_CBC_SHA384"),
    (0x00a2, "TLS_DHE_DSS_WITH_AES_128_GCM_SHA256"),
    (0x00a3, "TLS_DHE_DSS_WITH_AES_256_GCM_SHA384"),
    (0x00a8, "TLS_PSK_WITH_AES_128_GCM_SHA256"),
    (0x00a9, "TLS_PSK_WITH_AES_256_GCM_SHA384"),
    (0x00aa, "TLS_DHE_PSK_WITH_AES_128_GCM_SHA256"),
    (0x00ab, "TLS_DHE_PSK_WITH_AES_256_GCM_SHA384"),
    (0x00ac, "TLS_RSA_PSK_WITH_AES_128_GCM_SHA256"),
    (0x00ad, "TLS_RSA_PSK_WITH_AES_256_GCM_SHA384"),
    (0xd001, "TLS_ECDHE_PSK_WITH_AES_128_GCM_SHA256"),
    (0xd002, "TLS_ECDHE_PSK_WITH_AES_256_GCM_SHA384"),
    (0xccab, "TLS_PSK_WITH_CHACHA20_POLY1305_SHA256"),
    (0xccac, "TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256"),
    (0xccad, "TLS_DHE_PSK_WITH_CHACHA20_POLY1305_SHA256"),
    (0xccae, "TLS_RSA_PSK_WITH_CHACHA20_POLY1305_SHA256"),
    (0x00ff, "TLS_EMPTY_RENEGOTIATION_INFO_SCSV"),
    (0x1304, "TLS_AES_128_CCM_SHA256"),
    (0x1305, "TLS_AES_128_CCM_8_SHA256"),
    (0x5600, "TLS_FALLBACK_SCSV"),
    (0xc009, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA"),
    (0xc00a, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"),
    (0xc011, "TLS_ECDHE_RSA_WITH_RC4_128_SHA"),
    (0xc012, "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA"),
    (0xc013, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"),
    (0xc014, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA"),
    (0xc023, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256"),
    (0xc024, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384"),
    (0xc027, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256"),
    (0xc028, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384"),
    (0xc02d, "TLS_ECDH_ECDSA_WITH_AES_128_GCM_SHA256"),
    (0xc02e, "TLS_ECDH_ECDSA_WITH_AES_256_GCM_SHA384"),
    (0xc031, "TLS_ECDH_RSA_WITH_AES_128_GCM_SHA256"),
    (0xc032, "TLS_ECDH_RSA_WITH_AES_256_GCM_SHA384"),
    (0xc035, "TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA"),
    (0xc036, "TLS_ECDHE_PSK_WITH_AES_256_CBC_SHA"),
    (0xc03c, "TLS_RSA_WITH_ARIA_128_CBC_SHA256"),
    (0xc050, "TLS_RSA_WITH_ARIA_128_GCM_SHA256"),
    (0xc051, "TLS_RSA_WITH_ARIA_256_GCM_SHA384"),
    (0xc052, "TLS_DHE_RSA_WITH_ARIA_128_GCM_SHA256"),
    (0xc053, "TLS_DHE_RSA_WITH_ARIA_256_GCM_SHA384"),
    (0xc05c, "TLS_ECDHE_ECDSA_WITH_ARIA_128_GCM_SHA256"),
    (0xc05d, "TLS_ECDHE_ECDSA_WITH_ARIA_256_GCM_SHA384"),
    (0xc060, "TLS_ECDHE_RSA_WITH_ARIA_128_GCM_SHA256"),
    (0xc061, "TLS_ECDHE_RSA_WITH_ARIA_256_GCM_SHA384"),
    (0xc07a, "TLS_RSA_WITH_CAMELLIA_128_GCM_SHA256"),
    (0xc07b, "TLS_RSA_WITH_CAMELLIA_256_GCM_SHA384"),
    (0xc09c, "TLS_RSA_WITH_AES_128_CCM"),
    (0xc09d, "TLS_RSA_WITH_AES_256_CCM"),
    (0xc09e, "TLS_DHE_RSA_WITH_AES_128_CCM"),
    (0xc09f, "TLS_DHE_RSA_WITH_AES_256_CCM"),
    (0xc0a0, "TLS_RSA_WITH_AES_128_CCM_8"),
    (0xc0a1, "TLS_RSA_WITH_AES_256_CCM_8"),
    (0xc0a2, "TLS_DHE_RSA_WITH_AES_128_CCM_8"),
    (0xc0a3, "TLS_DHE_RSA_WITH_AES_256_CCM_8"),
    (0xc0a4, "TLS_PSK_WITH_AES_128_CCM"),
    (0xc0a5, "TLS_PSK_WITH_AES_256_CCM"),
    (0xc0a8, "TLS_PSK_WITH_AES_128_CCM_8"),
    (0xc0a9, "TLS_PSK_WITH_AES_256_CCM_8"),
    (0xc0ac, "TLS_ECDHE_ECDSA_WITH_AES_128_CCM"),
    (0xc0ad, "TLS_ECDHE_ECDSA_WITH_AES_256_CCM"),
    (0xc0ae, "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8"),
    (0xc0af, "TLS_ECDHE_ECDSA_WITH_AES_256_CCM_8"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_suites_resolve_by_number_and_name() {
        let suite = CipherSuite::from_id(0x1302).unwrap();
        assert_eq!(suite.name, "TLS_AES_256_GCM_SHA384");
        assert_eq!(suite.aead, AeadAlgorithm::Aes256Gcm);
        assert_eq!(suite.hash, HashAlgorithm::Sha384);
        assert_eq!(CipherSuite::from_name("tls_chacha20_poly1305_sha256").map(|s| s.id), Some(0x1303));
        for suite in SUPPORTED_SUITES {
            assert_eq!(CipherSuite::from_id(suite.id), Ok(suite));
        }
    }

    #[test]
    fn unsupported_suites_are_named() {
        let error = CipherSuite::from_id(0xc0a0).unwrap_err();
        assert_eq!(error.to_string(), "unsupported: TLS_RSA_WITH_AES_128_CCM_8 (0xc0a0)");
        let error = CipherSuite::from_id(0xfefe).unwrap_err();
        assert_eq!(error.to_string(), "unsupported: suite 0xfefe");
    }

    #[test]
    fn tables_have_no_duplicate_numbers() {
        let mut ids: Vec<u16> = SUPPORTED_SUITES.iter().map(|s| s.id).collect();
        ids.extend(OTHER_SUITE_NAMES.iter().map(|(id, _)| *id));
        let count = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), count);
    }
}
