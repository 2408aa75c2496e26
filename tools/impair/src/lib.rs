//! The impairment forwarder's logic: what becomes of each frame crossing one direction of a
//! link, decided by a seeded generator so that a run can be repeated.
//!
//! This kernel has no `netem` and loads no modules, so loss, duplication, reordering and
//! corruption in the lab come from here: `cutls-impair` (the binary) bridges two interfaces
//! through an [`Impairer`] per direction. Only IP frames are impaired; ARP and neighbour
//! discovery cross untouched so that address resolution stays out of the picture.
//!
//! Corruption flips one bit of a TCP segment's payload (or, for a segment without payload,
//! of its window field), either leaving the checksum as it was (a bad cable or a faulty NIC:
//! a receiver's checksum catches it) or fixing the TCP checksum up (what only an attacker or a
//! broken middlebox produces: only the TLS record's tag can catch it).
//!
//! Not supported yet: rate limiting, bursts (Gilbert-Elliott loss), impairing by flow.

use std::collections::BinaryHeap;
use std::cmp::Reverse;
use std::fmt;
use std::net::IpAddr;

use cutls_dataplane::wire::tcp::Packet as TcpPacket;
use cutls_dataplane::wire::{parse_frame, IpProtocol, LinkType, NetworkPayload, Transport};

/// What to do to one direction, each a probability in parts per million.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImpairSpec {
    pub loss_ppm: u32,
    pub duplicate_ppm: u32,
    /// Frames held back by a random delay up to `max_delay_us`, so that later ones overtake them.
    pub reorder_ppm: u32,
    pub max_delay_us: u32,
    /// One bit flipped in a TCP segment, checksum unchanged.
    pub corrupt_ppm: u32,
    /// One bit flipped in a TCP segment's payload, TCP checksum fixed up.
    pub corrupt_fixed_ppm: u32,
}

impl ImpairSpec {
    /// Parses `loss=1%,dup=0.5%,reorder=2%,delay=4000,corrupt=0.2%,corrupt-fixed=0.1%`
    /// (probabilities as percentages or fractions, `delay` in microseconds; `none` for nothing).
    pub fn parse(text: &str) -> Result<ImpairSpec, String> {
        let mut spec = ImpairSpec { max_delay_us: 4000, ..ImpairSpec::default() };
        if text.trim() == "none" || text.trim().is_empty() {
            return Ok(spec);
        }
        for item in text.split(',') {
            let (key, value) = item.split_once('=').ok_or_else(|| format!("{item:?}: expected key=value"))?;
            let value = value.trim();
            match key.trim() {
                "loss" => spec.loss_ppm = parse_probability(value)?,
                "dup" | "duplicate" => spec.duplicate_ppm = parse_probability(value)?,
                "reorder" => spec.reorder_ppm = parse_probability(value)?,
                "corrupt" => spec.corrupt_ppm = parse_probability(value)?,
                "corrupt-fixed" => spec.corrupt_fixed_ppm = parse_probability(value)?,
                "delay" => {
                    spec.max_delay_us = value.parse().map_err(|_| format!("delay={value}: not a number of microseconds"))?
                }
                other => {
                    return Err(format!(
                        "unknown impairment {other:?} (loss, dup, reorder, delay, corrupt, corrupt-fixed)"
                    ))
                }
            }
        }
        Ok(spec)
    }

    pub fn is_none(&self) -> bool {
        self.loss_ppm == 0 && self.duplicate_ppm == 0 && self.reorder_ppm == 0 && self.corrupt_ppm == 0 && self.corrupt_fixed_ppm == 0
    }
}

/// `1%`, `0.25%` or `0.01`: parts per million.
fn parse_probability(text: &str) -> Result<u32, String> {
    let (number, scale) = match text.strip_suffix('%') {
        Some(percent) => (percent, 10_000.0),
        None => (text, 1_000_000.0),
    };
    let value: f64 = number.parse().map_err(|_| format!("{text:?}: not a probability"))?;
    if !(0.0..=1_000_000.0).contains(&(value * scale)) {
        return Err(format!("{text:?}: a probability is between 0 and 100%"));
    }
    Ok((value * scale).round() as u32)
}

/// What an [`Impairer`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImpairCounters {
    pub frames: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub delayed: u64,
    pub corrupted: u64,
    pub corrupted_fixed: u64,
}

impl fmt::Display for ImpairCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "frames={} dropped={} duplicated={} delayed={} corrupted={} corrupted_fixed={}",
            self.frames, self.dropped, self.duplicated, self.delayed, self.corrupted, self.corrupted_fixed
        )
    }
}

/// One direction: frames in, frames out (now or later).
pub struct Impairer {
    spec: ImpairSpec,
    rng: Rng,
    /// Frames held back: (due time, arrival order) and the frame.
    held: BinaryHeap<Reverse<(u64, u64, Vec<u8>)>>,
    order: u64,
    counters: ImpairCounters,
}

impl Impairer {
    pub fn new(spec: ImpairSpec, seed: u64) -> Impairer {
        Impairer { spec, rng: Rng::new(seed), held: BinaryHeap::new(), order: 0, counters: ImpairCounters::default() }
    }

    pub fn counters(&self) -> ImpairCounters {
        self.counters
    }

    /// A frame arrived at `now_us`: what leaves now is pushed to `out` (none, one or two
    /// copies); a delayed frame comes out of [`Impairer::due`] later.
    pub fn frame(&mut self, now_us: u64, frame: &[u8], out: &mut Vec<Vec<u8>>) {
        self.counters.frames += 1;
        let kind = classify(frame);
        if kind == FrameKind::Other {
            out.push(frame.to_vec());
            return;
        }
        if self.rng.chance(self.spec.loss_ppm) {
            self.counters.dropped += 1;
            return;
        }
        let mut frame = frame.to_vec();
        if kind == FrameKind::Tcp {
            if self.rng.chance(self.spec.corrupt_ppm) {
                let random = self.rng.next();
                if flip_tcp_bit(&mut frame, random, false) {
                    self.counters.corrupted += 1;
                }
            } else if self.rng.chance(self.spec.corrupt_fixed_ppm) {
                let random = self.rng.next();
                if flip_tcp_bit(&mut frame, random, true) {
                    self.counters.corrupted_fixed += 1;
                }
            }
        }
        let copies = if self.rng.chance(self.spec.duplicate_ppm) {
            self.counters.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            if self.rng.chance(self.spec.reorder_ppm) && self.spec.max_delay_us > 0 {
                self.counters.delayed += 1;
                let delay = 1 + self.rng.next() % u64::from(self.spec.max_delay_us);
                self.order += 1;
                self.held.push(Reverse((now_us + delay, self.order, frame.clone())));
            } else {
                out.push(frame.clone());
            }
        }
    }

    /// Delayed frames whose time has come.
    pub fn due(&mut self, now_us: u64, out: &mut Vec<Vec<u8>>) {
        while let Some(Reverse((at, _, _))) = self.held.peek() {
            if *at > now_us {
                break;
            }
            if let Some(Reverse((_, _, frame))) = self.held.pop() {
                out.push(frame);
            }
        }
    }

    /// When the next delayed frame is due, if one is held.
    pub fn next_due(&self) -> Option<u64> {
        self.held.peek().map(|Reverse((at, _, _))| *at)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FrameKind {
    Tcp,
    /// IP, not TCP (UDP, ICMP other than neighbour discovery).
    OtherIp,
    /// ARP, neighbour discovery, anything unparsed: never impaired.
    Other,
}

fn classify(frame: &[u8]) -> FrameKind {
    let Ok(parsed) = parse_frame(LinkType::Ethernet, frame) else { return FrameKind::Other };
    match parsed.network {
        NetworkPayload::Ip { transport: Transport::Tcp(_), .. } => FrameKind::Tcp,
        NetworkPayload::Ip { transport: Transport::Icmpv6(message), .. } if (133..=137).contains(&message.msg_type) => {
            FrameKind::Other
        }
        NetworkPayload::Ip { .. } => FrameKind::OtherIp,
        _ => FrameKind::Other,
    }
}

/// Flips one bit of a TCP segment, `random` choosing where: of the payload, or of the window
/// field when there is none. With `fix_checksum` only payload bits are flipped and the TCP
/// checksum is recomputed, so that nothing below TLS can tell. Returns false if the frame is
/// not TCP (or, with `fix_checksum`, has no payload).
pub fn flip_tcp_bit(frame: &mut [u8], random: u64, fix_checksum: bool) -> bool {
    let (payload_at, payload_len, tcp_at, source, destination) = {
        let Ok(parsed) = parse_frame(LinkType::Ethernet, frame) else { return false };
        let (Some(ip), Some(tcp)) = (parsed.ip(), parsed.tcp()) else { return false };
        if ip.protocol != IpProtocol::Tcp {
            return false;
        }
        let payload_at = tcp.payload.as_ptr() as usize - frame.as_ptr() as usize;
        (payload_at, tcp.payload.len(), payload_at - tcp.header_len, ip.source, ip.destination)
    };
    let (at, bit) = if payload_len > 0 {
        let bit = (random % (payload_len as u64 * 8)) as usize;
        (payload_at + bit / 8, bit % 8)
    } else if fix_checksum {
        return false;
    } else {
        (tcp_at + 14 + (random % 2) as usize, (random >> 8) as usize % 8)
    };
    frame[at] ^= 1 << bit;
    if fix_checksum {
        return fill_tcp_checksum(&mut frame[tcp_at..payload_at + payload_len], source, destination);
    }
    true
}

fn fill_tcp_checksum(segment: &mut [u8], source: IpAddr, destination: IpAddr) -> bool {
    let mut packet = TcpPacket::new_unchecked(segment);
    packet.fill_checksum(source, destination).is_ok()
}

/// xorshift64* seeded through splitmix64.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn chance(&mut self, ppm: u32) -> bool {
        ppm > 0 && (self.next() % 1_000_000) < u64::from(ppm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cutls_dataplane::wire::parse_frame;

    /// An Ethernet/IPv4/TCP frame 198.18.0.10:40000 -> 198.18.0.21:80 with 4 payload bytes and
    /// correct checksums (as Linux sent it; checked below).
    const TCP_FRAME: [u8; 58] = [
        0x02, 0x00, 0xc6, 0x12, 0x00, 0x15, 0x02, 0x00, 0xc6, 0x12, 0x00, 0x0a, 0x08, 0x00, // ethernet
        0x45, 0x00, 0x00, 0x2c, 0x00, 0x01, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, // ipv4 (checksum filled below)
        198, 18, 0, 10, 198, 18, 0, 21, //
        0x9c, 0x40, 0x00, 0x50, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, // tcp ports, seq, ack
        0x50, 0x18, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, // offset, flags PA, window, checksum, urgent
        b'G', b'E', b'T', b' ',
    ];

    fn valid_frame() -> Vec<u8> {
        let mut frame = TCP_FRAME.to_vec();
        let mut ip = cutls_dataplane::wire::Ipv4Packet::new_unchecked(&mut frame[14..34]);
        ip.fill_checksum();
        let source = IpAddr::from([198, 18, 0, 10]);
        let destination = IpAddr::from([198, 18, 0, 21]);
        assert!(fill_tcp_checksum(&mut frame[34..], source, destination));
        frame
    }

    fn tcp_checksum_ok(frame: &[u8]) -> bool {
        parse_frame(LinkType::Ethernet, frame).unwrap().tcp().unwrap().checksum_valid
    }

    #[test]
    fn specs_parse_and_bad_ones_say_why() {
        let spec = ImpairSpec::parse("loss=1%,dup=0.5%,reorder=2%,delay=2500,corrupt=0.002,corrupt-fixed=0.1%").unwrap();
        assert_eq!(
            spec,
            ImpairSpec {
                loss_ppm: 10_000,
                duplicate_ppm: 5_000,
                reorder_ppm: 20_000,
                max_delay_us: 2500,
                corrupt_ppm: 2_000,
                corrupt_fixed_ppm: 1_000
            }
        );
        assert!(ImpairSpec::parse("none").unwrap().is_none());
        assert!(ImpairSpec::parse("loss=101%").unwrap_err().contains("between 0 and 100%"));
        assert!(ImpairSpec::parse("jitter=1%").unwrap_err().contains("unknown impairment"));
        assert!(ImpairSpec::parse("loss").unwrap_err().contains("key=value"));
    }

    #[test]
    fn a_flipped_bit_breaks_the_checksum_unless_fixed_up() {
        for random in 0..64 {
            let mut frame = valid_frame();
            assert!(tcp_checksum_ok(&frame));
            assert!(flip_tcp_bit(&mut frame, random, false));
            assert_ne!(frame, valid_frame());
            assert!(!tcp_checksum_ok(&frame), "random {random}");

            let mut fixed = valid_frame();
            assert!(flip_tcp_bit(&mut fixed, random, true));
            assert_ne!(fixed[54..], valid_frame()[54..], "a payload bit changed");
            assert!(tcp_checksum_ok(&fixed), "random {random}");
        }
    }

    #[test]
    fn the_same_seed_impairs_the_same_frames() {
        let spec = ImpairSpec::parse("loss=10%,dup=10%,reorder=10%,delay=100,corrupt=10%").unwrap();
        let run = |seed| {
            let mut impairer = Impairer::new(spec, seed);
            let mut out = Vec::new();
            for now in 0..2000u64 {
                impairer.frame(now, &valid_frame(), &mut out);
                impairer.due(now, &mut out);
            }
            impairer.due(u64::MAX, &mut out);
            (out, impairer.counters())
        };
        let (first, counters) = run(7);
        assert_eq!(run(7).0, first);
        assert_ne!(run(8).0, first);
        assert_eq!(counters.frames, 2000);
        // Every frame that was not dropped left once, or twice when duplicated.
        assert_eq!(first.len() as u64, counters.frames - counters.dropped + counters.duplicated);
        for (count, what) in [(counters.dropped, "dropped"), (counters.duplicated, "duplicated"), (counters.delayed, "delayed"), (counters.corrupted, "corrupted")] {
            assert!((120..=280).contains(&count), "{what}: {count} of 2000 at 10%");
        }
    }

    #[test]
    fn arp_is_never_impaired() {
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&[0x02, 0x00, 0xc6, 0x12, 0x00, 0x0a, 0x08, 0x06]);
        arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0xc6, 0x12, 0, 0x0a, 198, 18, 0, 10, 0, 0, 0, 0, 0, 0, 198, 18, 0, 21]);
        let mut impairer = Impairer::new(ImpairSpec::parse("loss=100%").unwrap(), 1);
        let mut out = Vec::new();
        impairer.frame(0, &arp, &mut out);
        assert_eq!(out, vec![arp]);
    }
}
