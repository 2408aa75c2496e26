//! One TCP connection of a capture: both directions, from the clear handshake to the last
//! protected record.

use std::fs::File;
use std::net::IpAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cutls_crypto::keys::tls12;
use cutls_crypto::{
    CipherSuite, ContentType, OpenError, OpenOutput, OpenerConfig, ProtocolVersion, RecordDone, RecordOpener,
    ReleaseMode, Secret, Stop, TrafficKeys,
};
use cutls_dataplane::wire::seq::unwrap_offset;

use super::compression::{self, Inflater};
use super::handshake::{self, Malformed};
use super::keylog::{KeyLog, Label};

/// An address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub address: IpAddr,
    pub port: u16,
}

/// What the connection needs of a captured TCP segment.
pub struct Segment<'a> {
    pub source: Endpoint,
    pub seq: u32,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub payload: &'a [u8],
}

/// Bytes of cleartext handshake kept per direction while out-of-order segments wait.
const MAX_CLEAR_BUFFER: usize = 1 << 20;
/// Segments kept per direction while the opener cannot take them yet.
const MAX_WAITING: usize = 4096;

const C2S: usize = 0;
const S2C: usize = 1;
const DIRECTION_NAMES: [&str; 2] = ["c2s", "s2c"];

pub struct Connection {
    client: Endpoint,
    server: Endpoint,
    /// The client is known from a SYN; otherwise the first sender, corrected by a ClientHello.
    client_from_syn: bool,
    halves: [Half; 2],
    client_random: Option<[u8; 32]>,
    server_random: Option<[u8; 32]>,
    /// Randoms of a TLS 1.2 renegotiation in progress, used at the encrypted ChangeCipherSpec.
    renegotiation_client_random: Option<[u8; 32]>,
    renegotiation_server_random: Option<[u8; 32]>,
    version: Option<u16>,
    suite_id: Option<u16>,
    suite: Option<&'static CipherSuite>,
    offers_early_data: bool,
    /// TLS 1.2 DEFLATE compression of record fragments.
    compressed: bool,
    renegotiations: usize,
    /// The first problem met; `None` is "ok".
    status: Option<String>,
    closed: bool,
}

#[derive(Default)]
struct Half {
    /// Sequence number of stream offset 0.
    isn: Option<u32>,
    /// Highest stream offset seen, to unwrap 32-bit sequence numbers.
    reference: u64,
    phase: Phase,
    /// Clear phase: in-order bytes not yet parsed into records, from `clear_offset`.
    clear: Vec<u8>,
    clear_offset: u64,
    /// Clear phase: segments ahead of the in-order point.
    early_segments: Vec<(u64, Vec<u8>)>,
    /// Handshake message bytes (clear or decrypted) not yet parsed.
    handshake: Vec<u8>,
    /// Encrypted phase: where the first protected record starts.
    encrypted_from: u64,
    opener: Option<RecordOpener>,
    stage: Stage,
    secret: Option<Secret>,
    /// Segments the opener could not take yet (or that arrived before its keys).
    waiting: Vec<(u64, Vec<u8>)>,
    /// While reading TLS 1.3 early data: every segment, to replay under the handshake keys if
    /// the early keys turn out wrong.
    replay: Vec<(u64, Vec<u8>)>,
    out: OpenOutput,
    /// Compressed sessions: the direction's zlib stream, and the compressed offset it has reached
    /// (records must be inflated in order).
    inflater: Option<Inflater>,
    compressed_next: u64,
    /// Plaintext is written here by offset, and renamed to its final name at the end.
    temp_path: PathBuf,
    output: Option<File>,
    output_error: Option<String>,
    plaintext_len: u64,
    records: u64,
    multi_segment_records: u64,
    duplicate_bytes: u64,
    out_of_order_segments: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Phase {
    #[default]
    Clear,
    Encrypted,
    Stopped,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Stage {
    #[default]
    None,
    Early,
    Handshake,
    Application,
}

impl Connection {
    /// `id` names the connection's temporary files in `out_dir` until its final name is known.
    pub fn new(source: Endpoint, destination: Endpoint, source_sent_syn: bool, id: usize, out_dir: &Path) -> Connection {
        let mut halves: [Half; 2] = Default::default();
        for (direction, half) in halves.iter_mut().enumerate() {
            half.temp_path = out_dir.join(format!(".cutls-decrypt-{id}-{direction}.part"));
        }
        Connection {
            client: source,
            server: destination,
            client_from_syn: source_sent_syn,
            halves,
            client_random: None,
            server_random: None,
            renegotiation_client_random: None,
            renegotiation_server_random: None,
            version: None,
            suite_id: None,
            suite: None,
            offers_early_data: false,
            compressed: false,
            renegotiations: 0,
            status: None,
            closed: false,
        }
    }

    pub fn client(&self) -> Endpoint {
        self.client
    }

    pub fn server(&self) -> Endpoint {
        self.server
    }

    /// Whether a SYN from `source` with `seq` starts a new connection on this tuple.
    pub fn is_new_syn(&self, source: Endpoint, seq: u32) -> bool {
        let direction = if source == self.client { C2S } else { S2C };
        match self.halves[direction].isn {
            Some(isn) => self.closed || isn != seq.wrapping_add(1),
            None => false,
        }
    }

    pub fn segment(&mut self, segment: &Segment<'_>, keys: &KeyLog) {
        let mut direction = if segment.source == self.client { C2S } else { S2C };
        if segment.syn {
            let half = &mut self.halves[direction];
            if half.isn.is_none() {
                half.isn = Some(segment.seq.wrapping_add(1));
            }
            // SYN without ACK comes from the client: fix roles if the first segment lied.
            if direction == S2C && !self.client_from_syn && self.halves[C2S].isn.is_none() {
                self.swap_roles();
                direction = C2S;
            }
            if direction == C2S {
                self.client_from_syn = true;
            }
        }
        if segment.fin || segment.rst {
            self.closed = true;
        }
        if segment.payload.is_empty() {
            return;
        }
        let half = &mut self.halves[direction];
        let isn = *half.isn.get_or_insert(segment.seq);
        let offset = unwrap_offset(half.reference, segment.seq.wrapping_sub(isn));
        half.reference = half.reference.max(offset);
        self.feed(direction, offset, segment.payload, keys);
    }

    fn swap_roles(&mut self) {
        core::mem::swap(&mut self.client, &mut self.server);
        self.halves.swap(C2S, S2C);
    }

    fn fail(&mut self, status: String) {
        if self.status.is_none() {
            self.status = Some(status);
        }
    }

    fn stop_all(&mut self, status: String) {
        self.fail(status);
        for half in &mut self.halves {
            half.phase = Phase::Stopped;
            half.waiting.clear();
        }
    }

    fn feed(&mut self, direction: usize, offset: u64, payload: &[u8], keys: &KeyLog) {
        match self.halves[direction].phase {
            Phase::Stopped => {}
            Phase::Clear => self.feed_clear(direction, offset, payload, keys),
            Phase::Encrypted => {
                if self.halves[direction].stage == Stage::Early {
                    self.halves[direction].replay.push((offset, payload.to_vec()));
                }
                self.feed_encrypted(direction, offset, payload, keys);
                self.retry_waiting(direction, keys);
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // The clear phase: handshake records read in order.

    fn feed_clear(&mut self, direction: usize, offset: u64, payload: &[u8], keys: &KeyLog) {
        let half = &mut self.halves[direction];
        let expected = half.clear_offset + half.clear.len() as u64;
        let end = offset + payload.len() as u64;
        if end <= expected {
            half.duplicate_bytes += payload.len() as u64;
            return;
        }
        if offset > expected {
            half.out_of_order_segments += 1;
            let held: usize = half.early_segments.iter().map(|(_, bytes)| bytes.len()).sum();
            if held + payload.len() <= MAX_CLEAR_BUFFER {
                half.early_segments.push((offset, payload.to_vec()));
            }
            return;
        }
        let skip = (expected - offset) as usize;
        half.duplicate_bytes += skip as u64;
        half.clear.extend_from_slice(&payload[skip..]);
        // Segments that waited for this one.
        loop {
            let expected = half.clear_offset + half.clear.len() as u64;
            let Some(index) = half
                .early_segments
                .iter()
                .position(|(at, bytes)| *at <= expected && *at + bytes.len() as u64 > expected)
            else {
                break;
            };
            let (at, bytes) = half.early_segments.swap_remove(index);
            half.clear.extend_from_slice(&bytes[(expected - at) as usize..]);
        }
        let expected = half.clear_offset + half.clear.len() as u64;
        half.early_segments.retain(|(at, bytes)| *at + bytes.len() as u64 > expected);
        if half.clear.len() > MAX_CLEAR_BUFFER {
            self.stop_all("handshake larger than 1 MiB".into());
            return;
        }
        self.parse_clear_records(direction, keys);
    }

    fn parse_clear_records(&mut self, mut direction: usize, keys: &KeyLog) {
        loop {
            let half = &self.halves[direction];
            if half.phase != Phase::Clear || half.clear.len() < 5 {
                return;
            }
            if half.clear_offset == 0 && direction == C2S {
                if let Some(parsed) = handshake::parse_sslv2_client_hello(&half.clear) {
                    match parsed {
                        Ok((len, random)) => {
                            self.client_random = Some(random);
                            let half = &mut self.halves[direction];
                            half.clear.drain(..len);
                            half.clear_offset += len as u64;
                            continue;
                        }
                        Err(_) if half.clear.len() < 2 + (((half.clear[0] & 0x7f) as usize) << 8 | half.clear[1] as usize) => return,
                        Err(Malformed(reason)) => {
                            self.stop_all(format!("malformed handshake: {reason}"));
                            return;
                        }
                    }
                }
            }
            let content_type = half.clear[0];
            let len = u16::from_be_bytes([half.clear[3], half.clear[4]]) as usize;
            if !(20..=24).contains(&content_type) || half.clear[1] != 3 {
                self.stop_all("not TLS".into());
                return;
            }
            if content_type == 23 {
                // The first protected record: TLS 1.3 (early data or the encrypted handshake),
                // or a TLS 1.2 peer that sent application data before its ChangeCipherSpec.
                let rest = core::mem::take(&mut self.halves[direction].clear);
                let at = self.halves[direction].clear_offset;
                let pending = core::mem::take(&mut self.halves[direction].early_segments);
                self.start_encrypted(direction, at, keys);
                self.feed(direction, at, &rest, keys);
                for (offset, bytes) in pending {
                    self.feed(direction, offset, &bytes, keys);
                }
                return;
            }
            if half.clear.len() < 5 + len {
                return;
            }
            let record: Vec<u8> = self.halves[direction].clear.drain(..5 + len).collect();
            self.halves[direction].clear_offset += (5 + len) as u64;
            let body = &record[5..];
            match content_type {
                22 => {
                    self.halves[direction].handshake.extend_from_slice(body);
                    match self.parse_clear_handshake(direction) {
                        Ok(swapped) => {
                            if swapped {
                                direction = 1 - direction;
                            }
                        }
                        Err(Malformed(reason)) => {
                            self.stop_all(format!("malformed handshake: {reason}"));
                            return;
                        }
                    }
                    if self.suite.is_some() || self.status.is_some() {
                        // The ServerHello may unblock the other direction's protected records.
                        self.retry_waiting(1 - direction, keys);
                    }
                }
                20 if self.version != Some(0x0304) => {
                    // TLS 1.2 ChangeCipherSpec: this direction's next record is protected.
                    let rest = core::mem::take(&mut self.halves[direction].clear);
                    let at = self.halves[direction].clear_offset;
                    let pending = core::mem::take(&mut self.halves[direction].early_segments);
                    self.start_encrypted(direction, at, keys);
                    if !rest.is_empty() {
                        self.feed(direction, at, &rest, keys);
                    }
                    for (offset, bytes) in pending {
                        self.feed(direction, offset, &bytes, keys);
                    }
                    return;
                }
                _ => {} // TLS 1.3 compatibility ChangeCipherSpec, clear alerts.
            }
        }
    }

    /// Parses whole clear handshake messages; returns whether client and server were swapped.
    fn parse_clear_handshake(&mut self, direction: usize) -> Result<bool, Malformed> {
        let mut swapped = false;
        let mut direction = direction;
        loop {
            let buffer = core::mem::take(&mut self.halves[direction].handshake);
            let Some((kind, body, used)) = handshake::next_message(&buffer)? else {
                self.halves[direction].handshake = buffer;
                return Ok(swapped);
            };
            match kind {
                handshake::CLIENT_HELLO => {
                    let hello = handshake::parse_client_hello(body)?;
                    if direction == S2C && !self.client_from_syn {
                        self.swap_roles();
                        direction = C2S;
                        swapped = !swapped;
                    }
                    // A second ClientHello after a HelloRetryRequest keeps the same random.
                    self.client_random = Some(hello.random);
                    self.offers_early_data = hello.offers_early_data;
                }
                handshake::SERVER_HELLO => {
                    let hello = handshake::parse_server_hello(body)?;
                    if !hello.is_hello_retry_request || self.version.is_none() {
                        self.version = Some(hello.version);
                        self.suite_id = Some(hello.suite);
                    }
                    if !hello.is_hello_retry_request {
                        self.server_random = Some(hello.random);
                        self.compressed = hello.compression == compression::METHOD_DEFLATE;
                        match CipherSuite::from_id(hello.suite) {
                            Ok(suite) => self.suite = Some(suite),
                            Err(unsupported) => self.stop_all(unsupported.to_string()),
                        }
                    }
                }
                _ => {}
            }
            let rest = buffer[used..].to_vec();
            self.halves[direction].handshake = rest;
        }
    }

    // ---------------------------------------------------------------------------------------
    // The encrypted phase: segments to the record engine.

    fn start_encrypted(&mut self, direction: usize, at: u64, keys: &KeyLog) {
        let half = &mut self.halves[direction];
        half.phase = Phase::Encrypted;
        half.encrypted_from = at;
        half.handshake.clear();
        self.make_opener(direction, keys);
    }

    /// Creates the direction's opener once the suite and keys are known.
    fn make_opener(&mut self, direction: usize, keys: &KeyLog) {
        if self.halves[direction].opener.is_some() || self.halves[direction].phase != Phase::Encrypted {
            return;
        }
        let Some(suite) = self.suite else { return };
        let Some(client_random) = self.client_random else {
            self.stop_all("no ClientHello".into());
            return;
        };
        let traffic = match suite.version {
            ProtocolVersion::Tls13 => {
                let (stage, label) = match direction {
                    C2S if self.offers_early_data && keys.get(&client_random, Label::ClientEarlyTraffic).is_some() => {
                        (Stage::Early, Label::ClientEarlyTraffic)
                    }
                    C2S => (Stage::Handshake, Label::ClientHandshakeTraffic),
                    _ => (Stage::Handshake, Label::ServerHandshakeTraffic),
                };
                let Some(secret) = keys.get(&client_random, label).and_then(|s| Secret::new(suite.hash, s).ok()) else {
                    self.stop_all("no keys".into());
                    return;
                };
                let traffic = secret.traffic_keys(suite.aead);
                self.halves[direction].stage = stage;
                self.halves[direction].secret = Some(secret);
                traffic
            }
            ProtocolVersion::Tls12 => match self.tls12_keys(direction, &client_random, self.server_random, keys) {
                Some(traffic) => traffic,
                None => {
                    self.stop_all("no keys".into());
                    return;
                }
            },
        };
        let half = &mut self.halves[direction];
        half.opener = Some(RecordOpener::new(&traffic, 0, half.encrypted_from, opener_config()));
        if self.compressed {
            half.inflater = Some(Inflater::new());
        }
    }

    fn tls12_keys(
        &self,
        direction: usize,
        client_random: &[u8; 32],
        server_random: Option<[u8; 32]>,
        keys: &KeyLog,
    ) -> Option<TrafficKeys> {
        let suite = self.suite?;
        let master = keys.get(client_random, Label::MasterSecret)?;
        let (client, server) = tls12::traffic_keys(suite, master, client_random, &server_random?).ok()?;
        Some(if direction == C2S { client } else { server })
    }

    fn feed_encrypted(&mut self, direction: usize, offset: u64, payload: &[u8], keys: &KeyLog) {
        if self.halves[direction].opener.is_none() {
            self.make_opener(direction, keys);
        }
        if self.halves[direction].opener.is_none() {
            let half = &mut self.halves[direction];
            if half.phase == Phase::Encrypted && half.waiting.len() < MAX_WAITING {
                half.waiting.push((offset, payload.to_vec()));
            }
            return;
        }
        let mut chunk = payload.to_vec();
        let mut out = core::mem::take(&mut self.halves[direction].out);
        let result = self.open_chunk(direction, offset, &mut chunk, &mut out, keys);
        // Application data to the output file, at its place in the plaintext stream.
        for release in &out.releases {
            let bytes = out.bytes(&chunk, release);
            if self.halves[direction].inflater.is_some() {
                if let Err(reason) = self.halves[direction].inflate_data(release.plaintext_offset, bytes) {
                    self.fail(reason);
                    self.halves[direction].phase = Phase::Stopped;
                    break;
                }
            } else {
                self.halves[direction].write(release.plaintext_offset, bytes);
            }
        }
        self.halves[direction].out = out;
        match result {
            Ok(None) => {}
            Ok(Some(consumed)) => {
                let half = &mut self.halves[direction];
                half.out_of_order_segments += 1;
                if half.waiting.len() < MAX_WAITING {
                    half.waiting.push((offset + consumed as u64, payload[consumed..].to_vec()));
                }
            }
            Err(error) => self.open_failed(direction, error, keys),
        }
    }

    /// Runs one chunk through the opener; returns where it was refused, if it was.
    fn open_chunk(
        &mut self,
        direction: usize,
        offset: u64,
        chunk: &mut [u8],
        out: &mut OpenOutput,
        keys: &KeyLog,
    ) -> Result<Option<usize>, OpenError> {
        let Some(opener) = self.halves[direction].opener.as_mut() else { return Ok(Some(0)) };
        let mut step = opener.open(offset, chunk, out)?;
        self.halves[direction].duplicate_bytes += out.duplicate_bytes as u64;
        loop {
            match step.stop {
                None => return Ok(None),
                Some(Stop::Refused(_)) => return Ok(Some(step.consumed)),
                Some(Stop::Record(done)) => {
                    let spans = done.stream_offset < offset
                        || done.stream_offset + done.record_len as u64 > offset + chunk.len() as u64;
                    let half = &mut self.halves[direction];
                    half.records += 1;
                    half.multi_segment_records += spans as u64;
                    self.record_done(direction, &done, out, keys);
                    if self.halves[direction].phase != Phase::Encrypted {
                        return Ok(None);
                    }
                    let Some(opener) = self.halves[direction].opener.as_mut() else { return Ok(None) };
                    step = opener.open_more(offset, chunk, step.consumed, out)?;
                }
            }
        }
    }

    /// A protected record verified: follow handshake messages that change keys.
    fn record_done(&mut self, direction: usize, done: &RecordDone, out: &OpenOutput, keys: &KeyLog) {
        let Some(suite) = self.suite else { return };
        match done.content_type {
            ContentType::Handshake => {
                if let Some(range) = &done.plaintext {
                    let half = &mut self.halves[direction];
                    let fragment = &out.held[range.clone()];
                    match half.inflater.as_mut() {
                        Some(inflater) => {
                            if let Err(reason) = inflater.record(fragment, &mut half.handshake) {
                                self.stop_all(reason.to_string());
                                return;
                            }
                        }
                        None => half.handshake.extend_from_slice(fragment),
                    }
                }
                loop {
                    let buffer = core::mem::take(&mut self.halves[direction].handshake);
                    let message = match handshake::next_message(&buffer) {
                        Ok(Some((kind, body, used))) => Some((kind, body.to_vec(), used)),
                        Ok(None) => None,
                        Err(Malformed(reason)) => {
                            self.stop_all(format!("malformed handshake: {reason}"));
                            return;
                        }
                    };
                    let Some((kind, body, used)) = message else {
                        self.halves[direction].handshake = buffer;
                        return;
                    };
                    self.halves[direction].handshake = buffer[used..].to_vec();
                    self.protected_handshake(direction, suite, kind, &body, keys);
                }
            }
            ContentType::ChangeCipherSpec if suite.version == ProtocolVersion::Tls12 && !done.unprotected => {
                // TLS 1.2 renegotiation: this direction switches to the new keys.
                let client_random = self.renegotiation_client_random.or(self.client_random);
                let server_random = self.renegotiation_server_random.or(self.server_random);
                let Some(client_random) = client_random else { return };
                match self.tls12_keys(direction, &client_random, server_random, keys) {
                    Some(traffic) => {
                        if let Some(opener) = self.halves[direction].opener.as_mut() {
                            opener.rekey(&traffic);
                        }
                    }
                    None => {
                        self.fail("no keys for renegotiation".into());
                        self.halves[direction].phase = Phase::Stopped;
                    }
                }
            }
            _ => {}
        }
    }

    fn protected_handshake(&mut self, direction: usize, suite: &CipherSuite, kind: u8, body: &[u8], keys: &KeyLog) {
        let Some(client_random) = self.client_random else { return };
        match (suite.version, kind) {
            (ProtocolVersion::Tls13, handshake::FINISHED) if self.halves[direction].stage == Stage::Handshake => {
                let label = if direction == C2S { Label::ClientTraffic0 } else { Label::ServerTraffic0 };
                self.switch_tls13_keys(direction, suite, keys.get(&client_random, label), Stage::Application);
            }
            (ProtocolVersion::Tls13, handshake::END_OF_EARLY_DATA) if direction == C2S => {
                let secret = keys.get(&client_random, Label::ClientHandshakeTraffic);
                self.switch_tls13_keys(direction, suite, secret, Stage::Handshake);
                self.halves[direction].replay.clear();
            }
            (ProtocolVersion::Tls13, handshake::KEY_UPDATE) => {
                let next = self.halves[direction].secret.as_ref().map(Secret::next_generation);
                if let Some(next) = next {
                    let traffic = next.traffic_keys(suite.aead);
                    if let Some(opener) = self.halves[direction].opener.as_mut() {
                        opener.rekey(&traffic);
                    }
                    self.halves[direction].secret = Some(next);
                }
            }
            (ProtocolVersion::Tls12, handshake::HELLO_REQUEST) => {}
            (ProtocolVersion::Tls12, handshake::CLIENT_HELLO) => {
                self.renegotiations += 1;
                if let Ok(hello) = handshake::parse_client_hello(body) {
                    self.renegotiation_client_random = Some(hello.random);
                }
            }
            (ProtocolVersion::Tls12, handshake::SERVER_HELLO) => {
                if let Ok(hello) = handshake::parse_server_hello(body) {
                    self.renegotiation_server_random = Some(hello.random);
                    if hello.suite != suite.id {
                        match CipherSuite::from_id(hello.suite) {
                            Ok(new_suite) => self.suite = Some(new_suite),
                            Err(unsupported) => self.stop_all(format!("renegotiated to {unsupported}")),
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn switch_tls13_keys(&mut self, direction: usize, suite: &CipherSuite, secret: Option<&[u8]>, stage: Stage) {
        let Some(secret) = secret.and_then(|s| Secret::new(suite.hash, s).ok()) else {
            self.fail("no keys".into());
            self.halves[direction].phase = Phase::Stopped;
            return;
        };
        let traffic = secret.traffic_keys(suite.aead);
        let half = &mut self.halves[direction];
        if let Some(opener) = half.opener.as_mut() {
            opener.rekey(&traffic);
        }
        half.secret = Some(secret);
        half.stage = stage;
    }

    fn open_failed(&mut self, direction: usize, error: OpenError, keys: &KeyLog) {
        let half = &mut self.halves[direction];
        // TLS 1.3 early data that the keys do not open: the client went straight to its
        // handshake keys. Start again there from the failed record.
        if half.stage == Stage::Early && matches!(error, OpenError::TagMismatch { .. }) {
            if let (Some(suite), Some(client_random), Some(opener)) = (self.suite, self.client_random, half.opener.as_ref()) {
                let from = opener.first_incomplete_offset();
                if let Some(secret) =
                    keys.get(&client_random, Label::ClientHandshakeTraffic).and_then(|s| Secret::new(suite.hash, s).ok())
                {
                    let traffic = secret.traffic_keys(suite.aead);
                    half.opener = Some(RecordOpener::new(&traffic, 0, from, opener_config()));
                    half.secret = Some(secret);
                    half.stage = Stage::Handshake;
                    let replay = core::mem::take(&mut half.replay);
                    for (offset, bytes) in replay {
                        self.feed_encrypted(direction, offset, &bytes, keys);
                    }
                    return;
                }
            }
        }
        let status = match error {
            OpenError::TagMismatch { seq } => format!("tag failure at record {seq}"),
            other => other.to_string(),
        };
        self.fail(status);
        let half = &mut self.halves[direction];
        half.phase = Phase::Stopped;
        half.waiting.clear();
    }

    /// Offers the waiting segments again until none is taken.
    fn retry_waiting(&mut self, direction: usize, keys: &KeyLog) {
        loop {
            let half = &mut self.halves[direction];
            if half.waiting.is_empty() || half.phase != Phase::Encrypted {
                return;
            }
            if half.opener.is_none() {
                self.make_opener(direction, keys);
                if self.halves[direction].opener.is_none() {
                    return;
                }
            }
            let waiting = core::mem::take(&mut self.halves[direction].waiting);
            let before: usize = waiting.iter().map(|(_, bytes)| bytes.len()).sum();
            let count = waiting.len();
            for (offset, bytes) in waiting {
                self.feed_encrypted(direction, offset, &bytes, keys);
            }
            let half = &mut self.halves[direction];
            // Each retry of a still-refused segment counted it as out of order again.
            half.out_of_order_segments = half.out_of_order_segments.saturating_sub(half.waiting.len() as u64);
            let after: usize = half.waiting.iter().map(|(_, bytes)| bytes.len()).sum();
            if after >= before && half.waiting.len() >= count {
                return;
            }
        }
    }

    /// Writes the output files (empty ones too) and returns the JSON report line.
    pub fn finish(&mut self, dir: &Path, name: &str) -> String {
        for (direction, suffix) in DIRECTION_NAMES.iter().enumerate() {
            let path = dir.join(format!("{name}.{suffix}"));
            let half = &mut self.halves[direction];
            // Everything was written to a temporary file by offset; move it in place.
            let result = match half.output.take() {
                Some(_) => std::fs::rename(&half.temp_path, &path),
                None => File::create(&path).map(drop),
            };
            if let Err(error) = result {
                half.output_error.get_or_insert(format!("{}: {error}", path.display()));
            }
        }
        // A direction that stopped in the middle of a record, or kept segments it never
        // placed, has a gap.
        if self.status.is_none() {
            for half in &self.halves {
                if half.phase != Phase::Encrypted {
                    continue;
                }
                let missing = match &half.opener {
                    Some(opener) if !half.waiting.is_empty() || !opener.is_idle() => Some(opener.first_incomplete_offset()),
                    None if !half.waiting.is_empty() => Some(half.encrypted_from),
                    _ => None,
                };
                if let (Some(offset), Some(isn)) = (missing, half.isn) {
                    self.status = Some(format!("gap at seq {}", isn.wrapping_add(offset as u32)));
                    break;
                }
            }
        }
        if self.status.is_none() && self.version.is_none() {
            self.status = Some(if self.client_random.is_some() { "no ServerHello".into() } else { "no handshake".into() });
        }
        if let Some(error) = self.halves.iter().find_map(|half| half.output_error.clone()) {
            self.status.get_or_insert(format!("output: {error}"));
        }
        let version = match self.version {
            Some(0x0304) => "TLS1.3".to_string(),
            Some(0x0303) => "TLS1.2".to_string(),
            Some(other) => format!("0x{other:04x}"),
            None => "none".to_string(),
        };
        let suite = match (self.suite, self.suite_id) {
            (Some(suite), _) => suite.name.to_string(),
            (None, Some(id)) => cutls_crypto::suite::suite_name(id).map_or(format!("0x{id:04x}"), str::to_string),
            (None, None) => "none".to_string(),
        };
        let [c2s, s2c] = &self.halves;
        format!(
            concat!(
                "{{\"client\":\"{}\",\"server\":\"{}\",\"version\":\"{}\",\"suite\":\"{}\",\"status\":{},",
                "\"records\":{{\"c2s\":{},\"s2c\":{}}},\"multi_segment_records\":{{\"c2s\":{},\"s2c\":{}}},",
                "\"bytes\":{{\"c2s\":{},\"s2c\":{}}},\"out_of_order_segments\":{},\"duplicate_bytes\":{},",
                "\"renegotiations\":{},\"files\":{{\"c2s\":{},\"s2c\":{}}}}}"
            ),
            socket(self.client),
            socket(self.server),
            version,
            suite,
            json_string(self.status.as_deref().unwrap_or("ok")),
            c2s.records,
            s2c.records,
            c2s.multi_segment_records,
            s2c.multi_segment_records,
            c2s.plaintext_len,
            s2c.plaintext_len,
            c2s.out_of_order_segments + s2c.out_of_order_segments,
            c2s.duplicate_bytes + s2c.duplicate_bytes,
            self.renegotiations,
            json_string(&dir.join(format!("{name}.c2s")).display().to_string()),
            json_string(&dir.join(format!("{name}.s2c")).display().to_string()),
        )
    }
}

impl Half {
    /// Compressed sessions: inflates a released record fragment and appends its plaintext.
    fn inflate_data(&mut self, compressed_offset: u64, fragment: &[u8]) -> Result<(), String> {
        if compressed_offset != self.compressed_next {
            return Err("compressed records completed out of order".into());
        }
        self.compressed_next += fragment.len() as u64;
        let mut plaintext = Vec::new();
        if let Some(inflater) = self.inflater.as_mut() {
            inflater.record(fragment, &mut plaintext)?;
        }
        let at = self.plaintext_len;
        self.write(at, &plaintext);
        Ok(())
    }

    /// Writes released plaintext at its offset (records may verify out of order).
    fn write(&mut self, plaintext_offset: u64, bytes: &[u8]) {
        if bytes.is_empty() || self.output_error.is_some() {
            return;
        }
        if self.output.is_none() {
            match File::create(&self.temp_path) {
                Ok(file) => self.output = Some(file),
                Err(error) => {
                    self.output_error = Some(error.to_string());
                    return;
                }
            }
        }
        if let Some(file) = &self.output {
            if let Err(error) = file.write_all_at(bytes, plaintext_offset) {
                self.output_error = Some(error.to_string());
            }
        }
        self.plaintext_len = self.plaintext_len.max(plaintext_offset + bytes.len() as u64);
    }
}

fn opener_config() -> OpenerConfig {
    // Offline: release only verified records, keep nothing after verification.
    OpenerConfig { mode: ReleaseMode::VerifyFirst, max_records: 64, keep_completed: false, hold_whole_below: 0 }
}

fn socket(endpoint: Endpoint) -> String {
    match endpoint.address {
        IpAddr::V4(v4) => format!("{v4}:{}", endpoint.port),
        IpAddr::V6(v6) => format!("[{v6}]:{}", endpoint.port),
    }
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
