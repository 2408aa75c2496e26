//! The session engine on both ports with its virtual clock, from the golden replays
//! (dataplane/tests/golden): the fuzzer's input picks a replay and drives the mutations of its
//! frames (frames dropped, repeated, swapped; TCP fields and payload bits changed; payloads cut
//! short; checksums fixed up or not), so that mutations reach the handshake and the splice of a
//! real session. What must hold: no panic, no backend payload on the outside port, no session
//! left once every timeout has run (`golden::replay_and_check`). The stable test
//! `mutated_golden_replays_never_panic_leak_or_linger` runs the same with seeded mutations.
#![no_main]

#[allow(dead_code)]
#[path = "../../dataplane/tests/engine_memory/tls.rs"]
mod tls;

#[path = "../../dataplane/tests/engine_memory/golden.rs"]
mod golden;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

const REPLAYS: [&[u8]; 2] = [
    include_bytes!("../../dataplane/tests/golden/tls13-aes128gcm.in.pcap"),
    include_bytes!("../../dataplane/tests/golden/tls12-ecdsa-chacha20.in.pcap"),
];

fn replays() -> &'static [Vec<(u64, Vec<u8>)>; 2] {
    static FRAMES: OnceLock<[Vec<(u64, Vec<u8>)>; 2]> = OnceLock::new();
    FRAMES.get_or_init(|| REPLAYS.map(golden::read_golden))
}

/// The fuzzer's bytes as the mutations' choices, four at a time; zeros once they run out.
struct InputDraws<'a>(&'a [u8]);

impl golden::Draw for InputDraws<'_> {
    fn draw(&mut self) -> u64 {
        let take = self.0.len().min(4);
        let (head, rest) = self.0.split_at(take);
        self.0 = rest;
        head.iter().rev().fold(0u64, |value, &byte| value << 8 | u64::from(byte))
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&which, draws)) = input.split_first() else { return };
    let inputs = &replays()[usize::from(which) % REPLAYS.len()];
    let frames = golden::mutate_frames(inputs, &mut InputDraws(draws));
    if let Err(failure) = golden::replay_and_check(&frames) {
        panic!("{failure}");
    }
});
