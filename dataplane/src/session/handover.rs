//! Keys from rustls to the record engine.
//!
//! After the handshake the box takes the traffic keys out of rustls
//! (`dangerous_extract_secrets`) and drops the connection. TLS 1.3 KeyUpdate needs the traffic
//! secrets themselves, which extraction does not give: [`SecretLog`], rustls' key-log hook,
//! keeps them per client random until [`SecretLog::take`] collects them.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;

use cutls_crypto::{CipherSuite, Secret, TrafficKeys};
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets, SupportedCipherSuite};

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
