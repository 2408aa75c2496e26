//! The golden replays' engine, and the mutation of their frames: shared by engine_memory's
//! tests (the byte-identical replays and the stable fuzz test) and the cargo-fuzz targets in
//! fuzz/, which include this file and `tls.rs` by path. It depends on nothing else of the
//! harness for that reason.

use std::net::SocketAddr;
use std::sync::Arc;

use cutls_crypto::ReleaseMode;
use cutls_dataplane::session::handover::SecretLog;
use cutls_dataplane::session::{Engine, EngineConfig, EngineKeys, ListenerSetup, LoopShare, Output, Port};
use cutls_dataplane::wire::{parse_frame, EthernetAddress, LinkType};

use super::tls::deterministic_server_config;

/// The seed of the golden engine's keys and of its deterministic TLS provider.
pub const GOLDEN_SEED: u64 = 0x601d_e9;

const MS: u64 = 1_000_000;

/// The addresses the golden replays were recorded with (the harness's `Addresses::ipv4()`; a
/// test checks that they agree).
pub const CLIENT_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0x00, 0x10]);
pub const OUTSIDE_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0x00, 0xfe]);
pub const INSIDE_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0x01, 0xfe]);

pub fn vip() -> SocketAddr {
    SocketAddr::from(([198, 18, 0, 100], 443))
}

pub fn backends() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([198, 18, 1, 10], 8080)), SocketAddr::from(([198, 18, 1, 11], 8080))]
}

/// The engine the golden replays were recorded with: transparent mode, cut-through,
/// [`engine_config`] with the seeded keys, and the seeded TLS provider.
pub fn golden_engine() -> Engine {
    let secrets = Arc::new(SecretLog::default());
    let listener = ListenerSetup {
        vip: vip(),
        tls: Some(deterministic_server_config(secrets.clone(), GOLDEN_SEED)),
        secrets,
        backends: backends(),
        mode: ReleaseMode::CutThrough,
        passthrough: None,
    };
    Engine::new(engine_config(listener, OUTSIDE_MAC, INSIDE_MAC, GOLDEN_SEED))
}

/// The engine configuration the in-memory tests start from (the harness's lab, the golden
/// replays, the benchmark): timeouts of 60 s idle and 30 s for the handshake and the close,
/// keys from `seed`, no SYN cookies, no limits, handshakes in the loop, one loop.
pub fn engine_config(
    listener: ListenerSetup,
    outside_mac: EthernetAddress,
    inside_mac: EthernetAddress,
    seed: u64,
) -> EngineConfig {
    EngineConfig {
        listeners: vec![listener],
        snat_address: None,
        outside_mac,
        inside_mac,
        idle_timeout_ns: 60_000 * MS,
        handshake_timeout_ns: 30_000 * MS,
        close_timeout_ns: 30_000 * MS,
        trust_rx_checksum: true,
        keys: EngineKeys::derive(seed),
        syn_cookies_after: usize::MAX,
        max_sessions: usize::MAX,
        max_sessions_per_client: 0,
        handshake_threads: 0,
        handshake_doorbell: None,
        loop_share: LoopShare::ONE,
        congestion: Default::default(),
        balancing: Default::default(),
        events: false,
        health: None,
    }
}

/// The frames of a golden pcap, with their times.
pub fn read_golden(bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let reader = cutls_dataplane::pcap::CaptureReader::new(bytes).expect("golden pcap");
    reader.map(|record| record.expect("golden record")).map(|record| (record.timestamp_ns, record.data.to_vec())).collect()
}

/// The port a recorded input arrived on: the client's MAC means outside.
pub fn port_of(frame: &[u8]) -> Port {
    if frame.get(6..12) == Some(&CLIENT_MAC.0[..]) {
        Port::Outside
    } else {
        Port::Inside
    }
}

/// Where the mutations' choices come from: a seeded generator (the stable test) or the
/// fuzzer's input.
pub trait Draw {
    fn draw(&mut self) -> u64;
}

/// The frames of a replay with a few mutations (frames dropped, repeated or swapped; TCP
/// header fields and payload bits flipped; payloads cut short; the checksums fixed up nine
/// times in ten, so that a mutation reaches the session code and not only the checksum check),
/// at the recorded times. Addresses and ports are left alone, so every mutated frame still
/// belongs to the recorded session.
pub fn mutate_frames(inputs: &[(u64, Vec<u8>)], draw: &mut impl Draw) -> Vec<(u64, Vec<u8>)> {
    let times: Vec<u64> = inputs.iter().map(|(time, _)| *time).collect();
    let mut frames: Vec<Vec<u8>> = inputs.iter().map(|(_, frame)| frame.clone()).collect();
    for _ in 0..1 + draw.draw() % 8 {
        if frames.is_empty() {
            break;
        }
        let index = (draw.draw() % frames.len() as u64) as usize;
        match draw.draw() % 6 {
            0 if frames.len() > 1 => {
                frames.remove(index);
            }
            1 => {
                let copy = frames[index].clone();
                let later = (index + 1 + (draw.draw() % 4) as usize).min(frames.len());
                frames.insert(later, copy);
            }
            2 if index + 1 < frames.len() => frames.swap(index, index + 1),
            _ => {
                let Some((tcp_at, end)) = tcp_span(&frames[index]) else { continue };
                let frame = &mut frames[index];
                match draw.draw() % 3 {
                    // A bit after the ports: sequence, acknowledgement, offset, flags, window,
                    // options or payload.
                    0 => {
                        let at = tcp_at + 4 + (draw.draw() % (end - tcp_at - 4) as u64) as usize;
                        frame[at] ^= 1 << (draw.draw() % 8);
                    }
                    // A whole field at random.
                    1 => {
                        let at = tcp_at + [4, 8, 13, 14][(draw.draw() % 4) as usize];
                        let value = draw.draw().to_be_bytes();
                        let width = if at == tcp_at + 13 { 1 } else if at == tcp_at + 14 { 2 } else { 4 };
                        frame[at..at + width].copy_from_slice(&value[..width]);
                    }
                    // The payload cut short.
                    _ => {
                        let header_len = ((frame[tcp_at + 12] >> 4) as usize * 4).max(20);
                        let keep = tcp_at + header_len;
                        if end > keep {
                            frame.truncate(keep + (draw.draw() % (end - keep) as u64) as usize);
                        }
                    }
                }
                if draw.draw() % 10 != 0 {
                    fix_checksums(frame);
                }
            }
        }
    }
    let last = times.last().copied().unwrap_or(0);
    frames.into_iter().zip(times.iter().copied().chain(std::iter::repeat(last))).map(|(f, t)| (t, f)).collect()
}

/// Feeds `frames` to a fresh golden engine at their times, then lets every timeout run out:
/// what went wrong, if anything. Wrong: a backend's payload on the outside port (plaintext
/// past the box), or a session left after every timeout. A panic is the caller's to see.
pub fn replay_and_check(frames: &[(u64, Vec<u8>)]) -> Result<(), String> {
    let backends = backends();
    let mut engine = golden_engine();
    let mut out = Output::default();
    let mut leaks = Vec::new();
    let mut check = |out: &mut Output| {
        for frame in out.outside.drain(..) {
            let from_backend = parse_frame(LinkType::Ethernet, &frame).is_ok_and(|f| {
                let backend = f.ip().is_some_and(|ip| backends.iter().any(|b| b.ip() == ip.source));
                backend && f.tcp().is_some_and(|t| !t.payload.is_empty())
            });
            if from_backend {
                leaks.push(format!("{} bytes: {:02x?}", frame.len(), &frame[..frame.len().min(64)]));
            }
        }
        out.inside.clear();
    };
    let mut now = 0;
    for (time, frame) in frames {
        now = now.max(*time);
        engine.handle_frame(now, port_of(frame), frame, &mut out);
        engine.poll(now, &mut out);
        check(&mut out);
    }
    // Every timeout runs out: the idle one (60 s here) is the longest.
    let end = now + 200_000 * MS;
    for _ in 0..100_000 {
        match engine.next_deadline_ns() {
            Some(deadline) if deadline <= end => {
                now = now.max(deadline);
                engine.poll(now, &mut out);
                check(&mut out);
            }
            _ => break,
        }
    }
    engine.poll(end, &mut out);
    check(&mut out);
    if !leaks.is_empty() {
        return Err(format!("backend payload on the outside port: {leaks:#?}"));
    }
    if engine.sessions() != 0 {
        return Err(format!("sessions left after every timeout: {:?}", engine.counters()));
    }
    Ok(())
}

/// Where an IPv4 frame's TCP header starts and its data ends.
pub fn tcp_span(frame: &[u8]) -> Option<(usize, usize)> {
    if frame.len() < 14 + 20 + 20 || frame[12..14] != [0x08, 0x00] || frame[14 + 9] != 6 {
        return None;
    }
    let tcp_at = 14 + (frame[14] & 0x0f) as usize * 4;
    let end = (14 + u16::from_be_bytes([frame[16], frame[17]]) as usize).min(frame.len());
    (tcp_at + 20 <= end).then_some((tcp_at, end))
}

/// Makes an IPv4 TCP frame's lengths and checksums right again after a mutation.
pub fn fix_checksums(frame: &mut [u8]) {
    use cutls_dataplane::wire::checksum::{internet_checksum, upper_layer_checksum_v4};
    if frame.len() < 14 + 20 {
        return;
    }
    let tcp_at = 14 + (frame[14] & 0x0f) as usize * 4;
    if tcp_at < 14 + 20 || tcp_at + 20 > frame.len() {
        return;
    }
    let total = (frame.len() - 14) as u16;
    frame[16..18].copy_from_slice(&total.to_be_bytes());
    frame[24..26].copy_from_slice(&[0, 0]);
    let header = internet_checksum(&frame[14..tcp_at]);
    frame[24..26].copy_from_slice(&header.to_be_bytes());
    let source = std::net::Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]);
    let destination = std::net::Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]);
    frame[tcp_at + 16..tcp_at + 18].copy_from_slice(&[0, 0]);
    let tcp = upper_layer_checksum_v4(source, destination, cutls_dataplane::wire::IpProtocol::Tcp, &frame[tcp_at..]);
    frame[tcp_at + 16..tcp_at + 18].copy_from_slice(&tcp.to_be_bytes());
}
