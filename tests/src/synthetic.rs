//! Synthetic TLS captures for `cutls decrypt` tests and its benchmark: sessions built record by
//! record with the engine's sealer, cut into segments with split headers, reordering and
//! duplicates, written as pcap with the dataplane's writer, with their key log.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use cutls_crypto::keys::tls12;
use cutls_crypto::{CipherSuite, ContentType, RecordSealer, Secret, TrafficKeys};
use cutls_dataplane::pcap::PcapWriter;
use cutls_dataplane::wire::LinkType;

const CLIENT_RANDOM: [u8; 32] = [0x11; 32];
const SERVER_RANDOM: [u8; 32] = [0x22; 32];

/// One direction's byte stream and the application data in it.
#[derive(Default)]
pub struct Stream {
    pub bytes: Vec<u8>,
    pub data: Vec<u8>,
}

impl Stream {
    fn clear(&mut self, content_type: u8, body: &[u8]) {
        self.bytes.extend([content_type, 3, 3, (body.len() >> 8) as u8, body.len() as u8]);
        self.bytes.extend_from_slice(body);
    }

    fn sealed(&mut self, sealer: &mut RecordSealer, content_type: ContentType, plaintext: &[u8]) {
        let mut record = vec![0u8; sealer.record_len(plaintext.len())];
        sealer.seal(content_type, plaintext, &mut record).expect("seal");
        self.bytes.extend(record);
        if content_type == ContentType::ApplicationData {
            self.data.extend_from_slice(plaintext);
        }
    }

    fn application_data(&mut self, sealer: &mut RecordSealer, sizes: &[usize], seed: u8) {
        for (i, &size) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..size).map(|j| (j as u8).wrapping_mul(seed).wrapping_add(i as u8)).collect();
            self.sealed(sealer, ContentType::ApplicationData, &data);
        }
    }
}

fn handshake_message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut message = vec![kind, 0, (body.len() >> 8) as u8, body.len() as u8];
    message.extend_from_slice(body);
    message
}

fn client_hello(suite: u16) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend(CLIENT_RANDOM);
    body.extend([0, 0, 2]);
    body.extend(suite.to_be_bytes());
    body.extend([1, 0, 0, 0]);
    handshake_message(1, &body)
}

fn server_hello(suite: u16, tls13: bool) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend(SERVER_RANDOM);
    body.push(0);
    body.extend(suite.to_be_bytes());
    body.push(0);
    if tls13 {
        body.extend([0, 6, 0, 0x2b, 0, 2, 3, 4]);
    } else {
        body.extend([0, 0]);
    }
    handshake_message(2, &body)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Application record sizes of a session, per direction.
pub struct Sizes<'a> {
    pub client: &'a [usize],
    pub server: &'a [usize],
}

/// The sizes the tests use: empty-ish, one byte, full 16 KiB records, odd lengths.
pub const TEST_SIZES: Sizes<'static> = Sizes { client: &[300, 5000, 1, 16384, 2900], server: &[16384, 16384, 7, 1200, 9000] };

/// A whole session: (c2s, s2c, key log).
pub fn session(suite_id: u16, sizes: &Sizes<'_>) -> (Stream, Stream, String) {
    let suite = CipherSuite::from_id(suite_id).expect("supported suite");
    let (mut c2s, mut s2c) = (Stream::default(), Stream::default());
    c2s.clear(22, &client_hello(suite_id));
    let tls13 = suite.version == cutls_crypto::ProtocolVersion::Tls13;
    s2c.clear(22, &server_hello(suite_id, tls13));
    let finished = handshake_message(20, &[0x5a; 12]);
    let (client_sizes, server_sizes) = (sizes.client, sizes.server);
    if tls13 {
        let secret = |fill: u8| vec![fill; suite.hash.output_len()];
        let labels = [
            ("CLIENT_HANDSHAKE_TRAFFIC_SECRET", 1u8),
            ("SERVER_HANDSHAKE_TRAFFIC_SECRET", 2),
            ("CLIENT_TRAFFIC_SECRET_0", 3),
            ("SERVER_TRAFFIC_SECRET_0", 4),
        ];
        let keylog: String =
            labels.iter().map(|(label, fill)| format!("{label} {} {}\n", hex(&CLIENT_RANDOM), hex(&secret(*fill)))).collect();
        let keys = |fill: u8| Secret::new(suite.hash, &secret(fill)).expect("secret").traffic_keys(suite.aead);
        // Middlebox-compatibility ChangeCipherSpec, then the encrypted flights.
        s2c.clear(20, &[1]);
        let mut server = RecordSealer::new(&keys(2), 0);
        s2c.sealed(&mut server, ContentType::Handshake, &handshake_message(8, &[0, 0]));
        s2c.sealed(&mut server, ContentType::Handshake, &finished);
        let mut server = RecordSealer::new(&keys(4), 0);
        s2c.sealed(&mut server, ContentType::Handshake, &handshake_message(4, &[0; 40]));
        s2c.application_data(&mut server, server_sizes, 3);
        // A KeyUpdate from the server half way, then more data under the next generation.
        s2c.sealed(&mut server, ContentType::Handshake, &handshake_message(24, &[0]));
        let next = Secret::new(suite.hash, &secret(4)).expect("secret").next_generation();
        let mut server = RecordSealer::new(&next.traffic_keys(suite.aead), 0);
        s2c.application_data(&mut server, &[4000, 33], 9);
        c2s.clear(20, &[1]);
        let mut client = RecordSealer::new(&keys(1), 0);
        c2s.sealed(&mut client, ContentType::Handshake, &finished);
        let mut client = RecordSealer::new(&keys(3), 0);
        c2s.application_data(&mut client, client_sizes, 5);
        (c2s, s2c, keylog)
    } else {
        let master = [0x33u8; 48];
        let keylog = format!("CLIENT_RANDOM {} {}\n", hex(&CLIENT_RANDOM), hex(&master));
        let (client_keys, server_keys): (TrafficKeys, TrafficKeys) =
            tls12::traffic_keys(suite, &master, &CLIENT_RANDOM, &SERVER_RANDOM).expect("key block");
        c2s.clear(22, &handshake_message(16, &[0; 33]));
        c2s.clear(20, &[1]);
        let mut client = RecordSealer::new(&client_keys, 0);
        c2s.sealed(&mut client, ContentType::Handshake, &finished);
        c2s.application_data(&mut client, client_sizes, 5);
        s2c.clear(20, &[1]);
        let mut server = RecordSealer::new(&server_keys, 0);
        s2c.sealed(&mut server, ContentType::Handshake, &finished);
        s2c.application_data(&mut server, server_sizes, 3);
        (c2s, s2c, keylog)
    }
}

/// Cuts a stream into segments: mostly `mss` bytes, but cut 2 bytes into every third record
/// header so headers are split; then swaps neighbours and repeats some, deterministically.
pub fn segments(stream: &[u8], mss: usize) -> Vec<(usize, usize)> {
    let mut cuts = vec![0];
    let mut record = 0;
    let mut count = 0;
    while record < stream.len() {
        let len = u16::from_be_bytes([stream[record + 3], stream[record + 4]]) as usize;
        if count % 3 == 1 {
            cuts.push(record + 2);
        }
        record += 5 + len;
        count += 1;
    }
    let mut position = 0;
    while position < stream.len() {
        position += mss;
        cuts.push(position.min(stream.len()));
    }
    cuts.sort_unstable();
    cuts.dedup();
    let mut pieces: Vec<(usize, usize)> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
    // Reordering: swap every fourth pair of neighbours. Duplication: repeat every seventh.
    for i in (1..pieces.len()).step_by(4) {
        pieces.swap(i - 1, i);
    }
    let mut with_duplicates = Vec::new();
    for (i, piece) in pieces.into_iter().enumerate() {
        with_duplicates.push(piece);
        if i % 7 == 3 {
            with_duplicates.push(piece);
        }
    }
    with_duplicates
}

fn frame(source: (IpAddr, u16), destination: (IpAddr, u16), seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
    let mut tcp = Vec::new();
    tcp.extend(source.1.to_be_bytes());
    tcp.extend(destination.1.to_be_bytes());
    tcp.extend(seq.to_be_bytes());
    tcp.extend(ack.to_be_bytes());
    tcp.extend([0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    tcp.extend_from_slice(payload);
    match (source.0, destination.0) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            frame.extend([0x08, 0x00]);
            let total = (20 + tcp.len()) as u16;
            frame.extend([0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, 6, 0, 0]);
            frame.extend(s.octets());
            frame.extend(d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            frame.extend([0x86, 0xdd]);
            let len = tcp.len() as u16;
            frame.extend([0x60, 0, 0, 0, (len >> 8) as u8, len as u8, 6, 64]);
            frame.extend(s.octets());
            frame.extend(d.octets());
        }
        _ => unreachable!("one address family per connection"),
    }
    frame.extend(tcp);
    frame
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;

/// Writes the session as a capture in `dir`: handshake, then both directions interleaved
/// segment by segment. Returns the capture's path, the key log's, and the two streams.
pub fn write_capture(
    dir: &Path,
    suite_id: u16,
    sizes: &Sizes<'_>,
    client: (IpAddr, u16),
    server: (IpAddr, u16),
) -> (PathBuf, PathBuf, Stream, Stream) {
    let (c2s, s2c, keylog) = session(suite_id, sizes);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let capture_path = dir.join("capture.pcap");
    let keylog_path = dir.join("keys.txt");
    std::fs::write(&keylog_path, keylog).expect("key log");
    let file = std::fs::File::create(&capture_path).expect("capture file");
    let mut writer = PcapWriter::new(file, LinkType::Ethernet).expect("pcap writer");
    let (client_isn, server_isn) = (0xfff0_0000u32, 0x7fff_fff0u32);
    let mut time = 1_700_000_000_000_000_000u64;
    let mut write = |frame: Vec<u8>| {
        time += 1000;
        writer.write_frame(time, &frame).expect("write frame");
    };
    write(frame(client, server, client_isn, 0, SYN, &[]));
    write(frame(server, client, server_isn, client_isn + 1, SYN | ACK, &[]));
    let c2s_segments = segments(&c2s.bytes, 1000);
    let s2c_segments = segments(&s2c.bytes, 1448);
    let longest = c2s_segments.len().max(s2c_segments.len());
    for i in 0..longest {
        if let Some(&(a, b)) = c2s_segments.get(i) {
            let seq = client_isn.wrapping_add(1).wrapping_add(a as u32);
            write(frame(client, server, seq, server_isn + 1, PSH_ACK, &c2s.bytes[a..b]));
        }
        if let Some(&(a, b)) = s2c_segments.get(i) {
            let seq = server_isn.wrapping_add(1).wrapping_add(a as u32);
            write(frame(server, client, seq, client_isn + 1, PSH_ACK, &s2c.bytes[a..b]));
        }
    }
    drop(writer);
    (capture_path, keylog_path, c2s, s2c)
}

/// A lab-range IPv4 endpoint (198.18.0.0/15).
pub fn v4(last: u8, port: u16) -> (IpAddr, u16) {
    (IpAddr::from([198, 18, 0, last]), port)
}

/// A documentation-range IPv6 endpoint (2001:db8::/32).
pub fn v6(last: u16, port: u16) -> (IpAddr, u16) {
    (IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, last]), port)
}
