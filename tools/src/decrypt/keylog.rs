//! NSS key log files (`SSLKEYLOGFILE`): secrets by client random.
//!
//! Lines are `LABEL <client random hex> <secret hex>`; `#` starts a comment. Known labels:
//! `CLIENT_RANDOM` (TLS 1.2 master secret), the TLS 1.3 traffic secrets and
//! `CLIENT_EARLY_TRAFFIC_SECRET`, `EXPORTER_SECRET`. Junk lines are counted and skipped, never
//! fatal: a key log is often assembled by hand.

use std::collections::HashMap;

/// Which secret a line carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Label {
    /// TLS 1.2 `CLIENT_RANDOM`: the 48-byte master secret.
    MasterSecret,
    ClientEarlyTraffic,
    ClientHandshakeTraffic,
    ServerHandshakeTraffic,
    ClientTraffic0,
    ServerTraffic0,
    Exporter,
}

impl Label {
    fn parse(text: &str) -> Option<Label> {
        Some(match text {
            "CLIENT_RANDOM" => Label::MasterSecret,
            "CLIENT_EARLY_TRAFFIC_SECRET" => Label::ClientEarlyTraffic,
            "CLIENT_HANDSHAKE_TRAFFIC_SECRET" => Label::ClientHandshakeTraffic,
            "SERVER_HANDSHAKE_TRAFFIC_SECRET" => Label::ServerHandshakeTraffic,
            "CLIENT_TRAFFIC_SECRET_0" => Label::ClientTraffic0,
            "SERVER_TRAFFIC_SECRET_0" => Label::ServerTraffic0,
            "EXPORTER_SECRET" => Label::Exporter,
            _ => return None,
        })
    }
}

/// Secrets by (client random, label).
#[derive(Debug, Default)]
pub struct KeyLog {
    secrets: HashMap<([u8; 32], Label), Vec<u8>>,
    /// Lines that were neither comments, blank, nor a known well-formed entry.
    pub skipped_lines: usize,
}

impl KeyLog {
    /// Adds every entry of `text`; later entries for the same random and label win.
    pub fn add_text(&mut self, text: &str) {
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_ascii_whitespace();
            let parsed = (|| {
                let label = Label::parse(fields.next()?)?;
                let random: [u8; 32] = decode_hex(fields.next()?)?.try_into().ok()?;
                let secret = decode_hex(fields.next()?)?;
                if fields.next().is_some() || secret.is_empty() || secret.len() > 64 {
                    return None;
                }
                Some((label, random, secret))
            })();
            match parsed {
                Some((label, random, secret)) => {
                    self.secrets.insert((random, label), secret);
                }
                None => self.skipped_lines += 1,
            }
        }
    }

    pub fn get(&self, client_random: &[u8; 32], label: Label) -> Option<&[u8]> {
        self.secrets.get(&(*client_random, label)).map(Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let high = (pair[0] as char).to_digit(16)?;
            let low = (pair[1] as char).to_digit(16)?;
            Some((high * 16 + low) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_comments_and_junk() {
        let random = "52362c10a2665e323a2adb4b9da0c10d4a8823719272f8b4c97af24f92784812";
        let text = format!(
            "# comment\n\nCLIENT_RANDOM {random} {}\nSERVER_TRAFFIC_SECRET_0 {random} {}\n\
             garbage line\nCLIENT_RANDOM nothex 00\nCLIENT_RANDOM {random}\nUNKNOWN_LABEL {random} 00\n",
            "ab".repeat(48),
            "cd".repeat(32)
        );
        let mut log = KeyLog::default();
        log.add_text(&text);
        let random: [u8; 32] = decode_hex(random).unwrap().try_into().unwrap();
        assert_eq!(log.get(&random, Label::MasterSecret).map(<[u8]>::len), Some(48));
        assert_eq!(log.get(&random, Label::ServerTraffic0), Some(&[0xcd; 32][..]));
        assert_eq!(log.get(&random, Label::ClientTraffic0), None);
        assert_eq!(log.skipped_lines, 4);
        assert_eq!(log.len(), 2);
    }

    #[test]
    fn uppercase_hex_is_accepted() {
        let mut log = KeyLog::default();
        log.add_text(&format!("CLIENT_RANDOM {} {}", "AA".repeat(32), "0F".repeat(48)));
        assert_eq!(log.get(&[0xaa; 32], Label::MasterSecret), Some(&[0x0f; 48][..]));
    }
}
