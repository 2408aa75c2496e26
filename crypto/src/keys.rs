//! Traffic keys: the TLS 1.3 key schedule pieces the engine needs (HKDF-Expand-Label, traffic
//! keys from a traffic secret, the KeyUpdate next-generation secret) and the TLS 1.2 PRF that
//! turns a key log's master secret into the key block.
//!
//! The engine never runs a handshake: its secrets come from rustls (live) or from a key log
//! (offline). Secrets are kept in fixed-size arrays and wiped on drop.

use core::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Sha256, Sha384};

use crate::suite::{AeadAlgorithm, CipherSuite, HashAlgorithm, ProtocolVersion};

/// Longest hash output (SHA-384).
const MAX_HASH_LEN: usize = 48;

/// A TLS 1.3 traffic secret (or any secret of the suite's hash length).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    hash: HashAlgorithm,
    bytes: [u8; MAX_HASH_LEN],
}

/// Error for a secret or key of the wrong length for its suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadKeyLength {
    pub expected: usize,
    pub actual: usize,
}

impl fmt::Display for BadKeyLength {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key material is {} bytes, the suite needs {}", self.actual, self.expected)
    }
}

impl std::error::Error for BadKeyLength {}

impl Secret {
    pub fn new(hash: HashAlgorithm, secret: &[u8]) -> Result<Secret, BadKeyLength> {
        if secret.len() != hash.output_len() {
            return Err(BadKeyLength { expected: hash.output_len(), actual: secret.len() });
        }
        let mut bytes = [0u8; MAX_HASH_LEN];
        bytes[..secret.len()].copy_from_slice(secret);
        Ok(Secret { hash, bytes })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.hash.output_len()]
    }

    pub fn hash(&self) -> HashAlgorithm {
        self.hash
    }

    /// The record protection keys for `aead` (RFC 8446 section 7.3).
    pub fn traffic_keys(&self, aead: AeadAlgorithm) -> TrafficKeys {
        let mut keys = TrafficKeys { aead, version: ProtocolVersion::Tls13, key: [0; 32], iv: [0; 12] };
        hkdf_expand_label(self.hash, self.as_bytes(), b"key", b"", &mut keys.key[..aead.key_len()]);
        hkdf_expand_label(self.hash, self.as_bytes(), b"iv", b"", &mut keys.iv);
        keys
    }

    /// The next generation after a KeyUpdate (RFC 8446 section 7.2).
    pub fn next_generation(&self) -> Secret {
        let mut next = Secret { hash: self.hash, bytes: [0; MAX_HASH_LEN] };
        let len = self.hash.output_len();
        hkdf_expand_label(self.hash, self.as_bytes(), b"traffic upd", b"", &mut next.bytes[..len]);
        next
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret").field("hash", &self.hash).finish_non_exhaustive()
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        wipe(&mut self.bytes);
    }
}

/// The key and IV that protect one direction's records.
///
/// For TLS 1.3 and for ChaCha20-Poly1305 the IV is 12 bytes XORed with the record sequence
/// number. For TLS 1.2 AES-GCM only its first 4 bytes are used: the salt before the 8-byte
/// explicit nonce each record carries.
#[derive(Clone, PartialEq, Eq)]
pub struct TrafficKeys {
    pub aead: AeadAlgorithm,
    pub version: ProtocolVersion,
    key: [u8; 32],
    iv: [u8; 12],
}

impl TrafficKeys {
    /// Keys as rustls' secret extraction or a test gives them. `iv` is 12 bytes, or 4 for a
    /// TLS 1.2 AES-GCM salt.
    pub fn new(
        version: ProtocolVersion,
        aead: AeadAlgorithm,
        key: &[u8],
        iv: &[u8],
    ) -> Result<TrafficKeys, BadKeyLength> {
        if key.len() != aead.key_len() {
            return Err(BadKeyLength { expected: aead.key_len(), actual: key.len() });
        }
        let iv_len = aead.iv_len(version);
        // rustls hands TLS 1.2 GCM keys over as a 12-byte IV (salt || first explicit nonce).
        if iv.len() != iv_len && iv.len() != 12 {
            return Err(BadKeyLength { expected: iv_len, actual: iv.len() });
        }
        let mut keys = TrafficKeys { aead, version, key: [0; 32], iv: [0; 12] };
        keys.key[..key.len()].copy_from_slice(key);
        keys.iv[..iv.len()].copy_from_slice(iv);
        Ok(keys)
    }

    pub fn key(&self) -> &[u8] {
        &self.key[..self.aead.key_len()]
    }

    /// The 12-byte IV (TLS 1.2 GCM: the 4-byte salt, then zeros or rustls' explicit part).
    pub fn iv(&self) -> &[u8; 12] {
        &self.iv
    }
}

impl fmt::Debug for TrafficKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrafficKeys").field("aead", &self.aead).field("version", &self.version).finish_non_exhaustive()
    }
}

impl Drop for TrafficKeys {
    fn drop(&mut self) {
        wipe(&mut self.key);
        wipe(&mut self.iv);
    }
}

fn wipe(bytes: &mut [u8]) {
    for byte in bytes.iter_mut() {
        // SAFETY-free volatile-ish wipe: black_box keeps the stores from being elided.
        *byte = 0;
    }
    core::hint::black_box(bytes);
}

/// HKDF-Expand-Label (RFC 8446 section 7.1): `HKDF-Expand(secret, HkdfLabel, out.len())`.
pub fn hkdf_expand_label(hash: HashAlgorithm, secret: &[u8], label: &[u8], context: &[u8], out: &mut [u8]) {
    // HkdfLabel: uint16 length, opaque label<7..255> = "tls13 " + label, opaque context<0..255>.
    let mut info = Vec::with_capacity(4 + 6 + label.len() + context.len());
    info.extend_from_slice(&(out.len() as u16).to_be_bytes());
    info.push((6 + label.len()) as u8);
    info.extend_from_slice(b"tls13 ");
    info.extend_from_slice(label);
    info.push(context.len() as u8);
    info.extend_from_slice(context);
    hkdf_expand(hash, secret, &info, out);
}

/// HKDF-Expand (RFC 5869 section 2.3).
pub fn hkdf_expand(hash: HashAlgorithm, prk: &[u8], info: &[u8], out: &mut [u8]) {
    let mut previous: Vec<u8> = Vec::new();
    let mut counter = 1u8;
    for chunk in out.chunks_mut(hash.output_len()) {
        let block = hmac(hash, prk, &[&previous, info, &[counter]]);
        chunk.copy_from_slice(&block[..chunk.len()]);
        previous = block;
        counter = counter.wrapping_add(1);
    }
}

/// HKDF-Extract (RFC 5869 section 2.2), for tests that walk the whole key schedule.
pub fn hkdf_extract(hash: HashAlgorithm, salt: &[u8], ikm: &[u8]) -> Vec<u8> {
    let zeros = [0u8; MAX_HASH_LEN];
    let salt = if salt.is_empty() { &zeros[..hash.output_len()] } else { salt };
    hmac(hash, salt, &[ikm])
}

fn hmac(hash: HashAlgorithm, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    fn run<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        // HMAC takes keys of any length: new_from_slice cannot fail for it.
        let Ok(mut mac) = <M as KeyInit>::new_from_slice(key) else {
            unreachable!("HMAC accepts any key length")
        };
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }
    match hash {
        HashAlgorithm::Sha256 => run::<Hmac<Sha256>>(key, parts),
        HashAlgorithm::Sha384 => run::<Hmac<Sha384>>(key, parts),
    }
}

/// TLS 1.2 key derivation (RFC 5246 sections 5 and 6.3).
pub mod tls12 {
    use super::*;

    /// `PRF(secret, label, seed)` = P_hash(secret, label + seed), filling `out`.
    pub fn prf(hash: HashAlgorithm, secret: &[u8], label: &[u8], seed: &[u8], out: &mut [u8]) {
        // A(0) = label + seed; A(i) = HMAC(secret, A(i-1)); output HMAC(secret, A(i) + label + seed).
        let mut a = hmac(hash, secret, &[label, seed]);
        for chunk in out.chunks_mut(hash.output_len()) {
            let block = hmac(hash, secret, &[&a, label, seed]);
            chunk.copy_from_slice(&block[..chunk.len()]);
            a = hmac(hash, secret, &[&a]);
        }
    }

    /// The master secret from a pre-master secret (RFC 5246 section 8.1); with the extended
    /// master secret (RFC 7627) pass the session hash as `seed` and `extended` true.
    pub fn master_secret(
        hash: HashAlgorithm,
        pre_master: &[u8],
        client_random: &[u8; 32],
        server_random: &[u8; 32],
    ) -> [u8; 48] {
        let mut seed = [0u8; 64];
        seed[..32].copy_from_slice(client_random);
        seed[32..].copy_from_slice(server_random);
        let mut master = [0u8; 48];
        prf(hash, pre_master, b"master secret", &seed, &mut master);
        master
    }

    /// The client and server write keys of an AEAD suite from the master secret.
    ///
    /// The key block is `client_write_key, server_write_key, client_write_IV, server_write_IV`
    /// (AEAD suites have no MAC keys), with the seed `server_random + client_random`.
    pub fn traffic_keys(
        suite: &CipherSuite,
        master_secret: &[u8],
        client_random: &[u8; 32],
        server_random: &[u8; 32],
    ) -> Result<(TrafficKeys, TrafficKeys), BadKeyLength> {
        if master_secret.len() != 48 {
            return Err(BadKeyLength { expected: 48, actual: master_secret.len() });
        }
        let key_len = suite.aead.key_len();
        let iv_len = suite.aead.iv_len(ProtocolVersion::Tls12);
        let mut seed = [0u8; 64];
        seed[..32].copy_from_slice(server_random);
        seed[32..].copy_from_slice(client_random);
        let mut block = [0u8; 2 * (32 + 12)];
        let block = &mut block[..2 * (key_len + iv_len)];
        prf(suite.hash, master_secret, b"key expansion", &seed, block);
        let (client_key, rest) = block.split_at(key_len);
        let (server_key, rest) = rest.split_at(key_len);
        let (client_iv, server_iv) = rest.split_at(iv_len);
        let client = TrafficKeys::new(ProtocolVersion::Tls12, suite.aead, client_key, client_iv)?;
        let server = TrafficKeys::new(ProtocolVersion::Tls12, suite.aead, server_key, server_iv)?;
        wipe(block);
        Ok((client, server))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).unwrap()
    }

    /// RFC 8448 section 3 (simple 1-RTT handshake): the server's handshake traffic secret and the
    /// key and IV derived from it, and the application secrets.
    #[test]
    fn rfc8448_traffic_keys() {
        let secret = Secret::new(
            HashAlgorithm::Sha256,
            &unhex("b6 7b 7d 69 0c c1 6c 4e 75 e5 42 13 cb 2d 37 b4 e9 c9 12 bc de d9 10 5d 42 be fd 59 d3 91 ad 38"),
        )
        .unwrap();
        let keys = secret.traffic_keys(AeadAlgorithm::Aes128Gcm);
        assert_eq!(keys.key(), &unhex("3f ce 51 60 09 c2 17 27 d0 f2 e4 e8 6e e4 03 bc")[..]);
        assert_eq!(&keys.iv()[..], &unhex("5d 31 3e b2 67 12 76 ee 13 00 0b 30")[..]);

        // Server application traffic secret -> key/iv.
        let secret = Secret::new(
            HashAlgorithm::Sha256,
            &unhex("a1 1a f9 f0 55 31 f8 56 ad 47 11 6b 45 a9 50 32 82 04 b4 f4 4b fb 6b 3a 4b 4f 1f 3f cb 63 16 43"),
        )
        .unwrap();
        let keys = secret.traffic_keys(AeadAlgorithm::Aes128Gcm);
        assert_eq!(keys.key(), &unhex("9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56")[..]);
        assert_eq!(&keys.iv()[..], &unhex("cf 78 2b 88 dd 83 54 9a ad f1 e9 84")[..]);
    }

    #[test]
    fn rfc8448_early_secret_extract() {
        // Early secret = HKDF-Extract(0, 0).
        let early = hkdf_extract(HashAlgorithm::Sha256, &[], &[0u8; 32]);
        assert_eq!(
            early,
            unhex("33 ad 0a 1c 60 7e c0 3b 09 e6 cd 98 93 68 0c e2 10 ad f3 00 aa 1f 26 60 e1 b2 2e 10 f1 70 f9 2a")
        );
    }

    #[test]
    fn key_update_changes_the_secret_and_is_deterministic() {
        let secret = Secret::new(HashAlgorithm::Sha384, &[7u8; 48]).unwrap();
        let next = secret.next_generation();
        assert_ne!(next.as_bytes(), secret.as_bytes());
        assert_eq!(next, secret.next_generation());
        assert_eq!(next.as_bytes().len(), 48);
    }

    #[test]
    fn wrong_lengths_are_errors() {
        assert_eq!(
            Secret::new(HashAlgorithm::Sha256, &[0; 48]).unwrap_err(),
            BadKeyLength { expected: 32, actual: 48 }
        );
        assert!(TrafficKeys::new(ProtocolVersion::Tls12, AeadAlgorithm::Aes128Gcm, &[0; 32], &[0; 4]).is_err());
        assert!(TrafficKeys::new(ProtocolVersion::Tls12, AeadAlgorithm::Aes128Gcm, &[0; 16], &[0; 4]).is_ok());
    }

    /// TLS 1.2 PRF test vectors (SHA-256 and SHA-384) as published for P_hash testing
    /// (the widely used vectors from the IETF TLS mailing list, also in Go's and BoringSSL's tests).
    #[test]
    fn tls12_prf_sha256_vector() {
        let secret = unhex("9b be 43 6b a9 40 f0 17 b1 76 52 84 9a 71 db 35");
        let seed = unhex("a0 ba 9f 93 6c da 31 18 27 a6 f7 96 ff d5 19 8c");
        let mut out = [0u8; 100];
        tls12::prf(HashAlgorithm::Sha256, &secret, b"test label", &seed, &mut out);
        assert_eq!(
            out.to_vec(),
            unhex(
                "e3 f2 29 ba 72 7b e1 7b 8d 12 26 20 55 7c d4 53 c2 aa b2 1d 07 c3 d4 95 32 9b 52 d4 e6 1e db 5a
                 6b 30 17 91 e9 0d 35 c9 c9 a4 6b 4e 14 ba f9 af 0f a0 22 f7 07 7d ef 17 ab fd 37 97 c0 56 4b ab
                 4f bc 91 66 6e 9d ef 9b 97 fc e3 4f 79 67 89 ba a4 80 82 d1 22 ee 42 c5 a7 2e 5a 51 10 ff f7 01
                 87 34 7b 66"
            )
        );
    }

    #[test]
    fn tls12_prf_sha384_vector() {
        let secret = unhex("b8 0b 73 3d 6c ee fc dc 71 56 6e a4 8e 55 67 df");
        let seed = unhex("cd 66 5c f6 a8 44 7d d6 ff 8b 27 55 5e db 74 65");
        let mut out = [0u8; 148];
        tls12::prf(HashAlgorithm::Sha384, &secret, b"test label", &seed, &mut out);
        assert_eq!(
            out.to_vec(),
            unhex(
                "7b 0c 18 e9 ce d4 10 ed 18 04 f2 cf a3 4a 33 6a 1c 14 df fb 49 00 bb 5f d7 94 21 07 e8 1c 83 cd
                 e9 ca 0f aa 60 be 9f e3 4f 82 b1 23 3c 91 46 a0 e5 34 cb 40 0f ed 27 00 88 4f 9d c2 36 f8 0e dd
                 8b fa 96 11 44 c9 e8 d7 92 ec a7 22 a7 b3 2f c3 d4 16 d4 73 eb c2 c5 fd 4a bf da d0 5d 91 84 25
                 9b 5b f8 cd 4d 90 fa 0d 31 e2 de c4 79 e4 f1 a2 60 66 f2 ee a9 a6 92 36 a3 e5 26 55 c9 e9 ae e6
                 91 c8 f3 a2 68 54 30 8d 5e aa 3b e8 5e 09 90 70 3d 73 e5 6f"
            )
        );
    }
}
