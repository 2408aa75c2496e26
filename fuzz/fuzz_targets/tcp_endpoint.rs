//! The handshake phase's TCP endpoint: after the golden client's real SYN, a sequence of client
//! segments the fuzzer's input describes (flags, sequence and acknowledgement numbers near the
//! ones the box expects or anywhere, window, timestamps, payload cut from the golden client's
//! real first flight at any offset), with right checksums, at times the input advances. What
//! must hold: no panic, no backend payload on the outside port, no session left once every
//! timeout has run.
#![no_main]

#[allow(dead_code)]
#[path = "../../dataplane/tests/engine_memory/tls.rs"]
mod tls;

#[allow(dead_code)]
#[path = "../../dataplane/tests/engine_memory/golden.rs"]
mod golden;

use std::sync::OnceLock;

use cutls_dataplane::session::{Output, Port};
use cutls_dataplane::wire::{parse_frame, LinkType, TcpFlags};
use libfuzzer_sys::fuzz_target;

mod reader;
use reader::Reader;

const REPLAY: &[u8] = include_bytes!("../../dataplane/tests/golden/tls13-aes128gcm.in.pcap");

struct Client {
    /// The client's SYN, and a later segment of its (with the options it uses after the SYN).
    syn: Vec<u8>,
    template: Vec<u8>,
    /// Everything the client sent, in order (its ClientHello and Finished flights first).
    stream: Vec<u8>,
}

fn client() -> &'static Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let frames = golden::read_golden(REPLAY);
        let mut syn = None;
        let mut stream = Vec::new();
        let mut template = None;
        // The client's TCP segments (its first frames are ARP).
        for (_, frame) in frames.iter().filter(|(_, frame)| golden::port_of(frame) == Port::Outside) {
            let Ok(parsed) = parse_frame(LinkType::Ethernet, frame) else { continue };
            let Some(tcp) = parsed.tcp() else { continue };
            if tcp.flags.contains(TcpFlags::SYN) {
                syn.get_or_insert_with(|| frame.clone());
                continue;
            }
            stream.extend_from_slice(tcp.payload);
            if template.is_none() && !tcp.payload.is_empty() {
                template = Some(frame.clone());
            }
        }
        Client { syn: syn.expect("the client's SYN"), template: template.expect("a data segment"), stream }
    })
}


/// `template` with new sequence and acknowledgement numbers, flags, window and payload (and,
/// with `clock`, a new timestamp value), checksums right.
fn segment(template: &[u8], seq: u32, ack: u32, flags: u8, window: u16, clock: Option<u32>, payload: &[u8]) -> Vec<u8> {
    let (tcp_at, _) = golden::tcp_span(template).expect("a TCP template");
    let header_len = (template[tcp_at + 12] >> 4) as usize * 4;
    let mut frame = template[..tcp_at + header_len].to_vec();
    frame[tcp_at + 4..tcp_at + 8].copy_from_slice(&seq.to_be_bytes());
    frame[tcp_at + 8..tcp_at + 12].copy_from_slice(&ack.to_be_bytes());
    frame[tcp_at + 13] = flags;
    frame[tcp_at + 14..tcp_at + 16].copy_from_slice(&window.to_be_bytes());
    if let Some(value) = clock {
        // The timestamp option's value, where Linux puts it (NOP, NOP, kind 8 first).
        if header_len >= 32 && frame[tcp_at + 20..tcp_at + 23] == [1, 1, 8] {
            frame[tcp_at + 24..tcp_at + 28].copy_from_slice(&value.to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    golden::fix_checksums(&mut frame);
    frame
}

fuzz_target!(|input: &[u8]| {
    let client = client();
    let mut input = Reader(input);
    let mut engine = golden::golden_engine();
    let mut out = Output::default();
    let backends = golden::backends();
    let leaked = |out: &mut Output| {
        let leak = out.outside.iter().any(|frame| {
            parse_frame(LinkType::Ethernet, frame).is_ok_and(|f| {
                f.ip().is_some_and(|ip| backends.iter().any(|b| b.ip() == ip.source)) && f.tcp().is_some_and(|t| !t.payload.is_empty())
            })
        });
        out.inside.clear();
        leak
    };
    let mut now = 1_000_000_000u64;
    engine.handle_frame(now, Port::Outside, &client.syn, &mut out);
    // The box's ISN, from its SYN-ACK (or a cookie's).
    let box_isn = out
        .outside
        .iter()
        .find_map(|frame| parse_frame(LinkType::Ethernet, frame).ok().and_then(|f| f.tcp().map(|t| t.seq_number.0)))
        .unwrap_or(0);
    out.outside.clear();
    let client_isn = parse_frame(LinkType::Ethernet, &client.syn).ok().and_then(|f| f.tcp().map(|t| t.seq_number.0)).unwrap_or(0);
    let mut clock = 0u32;
    for _ in 0..64 {
        if input.is_empty() {
            break;
        }
        let kind = input.byte();
        // Near what the box expects most of the time, anywhere otherwise.
        let offset = u32::from(input.byte()) * 64 + u32::from(input.byte());
        let seq = if kind & 0x80 == 0 { client_isn.wrapping_add(1).wrapping_add(offset) } else { input.u32() };
        let ack = if kind & 0x40 == 0 { box_isn.wrapping_add(1).wrapping_add(u32::from(input.byte())) } else { input.u32() };
        let flags = if kind & 0x20 == 0 { 0x10 | (input.byte() & 0x0f) } else { input.byte() };
        let window = u16::from_le_bytes([input.byte(), input.byte()]);
        clock = clock.wrapping_add(u32::from(input.byte()));
        let start = (offset as usize).min(client.stream.len());
        let len = (usize::from(input.byte()) * 8).min(client.stream.len() - start);
        let template = if flags & 0x02 != 0 { &client.syn } else { &client.template };
        let frame = segment(template, seq, ack, flags, window, Some(clock), &client.stream[start..start + len]);
        now += u64::from(input.byte()) * 1_000_000;
        engine.handle_frame(now, Port::Outside, &frame, &mut out);
        engine.poll(now, &mut out);
        assert!(!leaked(&mut out), "backend payload on the outside port");
        out.outside.clear();
    }
    let end = now + 200_000_000_000;
    for _ in 0..100_000 {
        match engine.next_deadline_ns() {
            Some(deadline) if deadline <= end => {
                now = now.max(deadline);
                engine.poll(now, &mut out);
                assert!(!leaked(&mut out), "backend payload on the outside port");
                out.outside.clear();
            }
            _ => break,
        }
    }
    engine.poll(end, &mut out);
    assert_eq!(engine.sessions(), 0, "sessions left after every timeout: {:?}", engine.counters());
});
