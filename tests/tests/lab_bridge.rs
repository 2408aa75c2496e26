//! End to end: `cutls run` as a transparent bridge in the lab, once per frame I/O backend.
//!
//! Each test brings up a fresh lab (under the lab lock, so the tests run one at a time), proves
//! that client and server cannot reach each other while nothing forwards in the box, starts
//! cutls in the box, and checks ping (IPv4 and IPv6), a 50 MB TCP transfer (SHA-256 at both
//! ends) and a TLS download by curl from nginx on a backend address (IPv4 and IPv6). Then it
//! stops cutls with SIGTERM, checks its counters and that the XDP program is gone, and proves
//! the path is closed again. The lab is torn down even when a check fails.
//!
//! These tests need root. `CUTLS_SKIP_LAB=1` skips them (and says so).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use cutls_tests::lab::{
    cutls_binary, lab_enabled, lab_script, sha256, tcp_transfer, ByteStream, Cutls, Lab, Nginx,
};

const TRANSFER_BYTES: u64 = 50 * 1000 * 1000;
const DOWNLOAD_BYTES: usize = 4 * 1024 * 1024;
const TRANSFER_PORT: u16 = 5001;
const TLS_HOST: &str = "backend.lab";

fn download_blob() -> Vec<u8> {
    let mut blob = vec![0u8; DOWNLOAD_BYTES];
    ByteStream::new(42).fill(&mut blob);
    blob
}

/// Frames forwarded in one direction, from a line such as "outside -> inside: 35021 frames,
/// 52012345 bytes, 0 dropped (ring full 0, oversize 0, rejected 0)".
fn forwarded_frames(report: &str, direction: &str) -> u64 {
    report
        .lines()
        .find_map(|line| line.strip_prefix(direction))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no {direction:?} counters in:\n{report}"))
}

fn xdp_attached(lab: &Lab, interface: &str) -> bool {
    let output = lab
        .run_in(&lab.env.box_ns, "ip", &["-d", "link", "show", interface])
        .expect("ip link show");
    String::from_utf8_lossy(&output.stdout).contains("prog/xdp")
}

/// Nothing crosses the box: ping, TCP and TLS all fail.
fn assert_path_closed(lab: &Lab, nginx: &Nginx, when: &str) {
    let backend = lab.env.backends_v4[0];
    assert!(
        !lab.ping(backend, 1).unwrap(),
        "{when}: ping to {backend} must fail"
    );
    let target = SocketAddr::new(lab.env.backends_v4[2], TRANSFER_PORT);
    let transfer = tcp_transfer(
        lab,
        target,
        1000,
        Duration::from_millis(1500),
        Duration::from_secs(2),
    );
    assert!(
        transfer.is_err(),
        "{when}: TCP to {target} must fail, got {transfer:?}"
    );
    let download = nginx
        .curl(lab, lab.env.backends_v4[1], "blob", Duration::from_secs(3))
        .unwrap();
    assert!(download.is_err(), "{when}: curl must fail");
}

/// The whole check for one backend. `expected_mode` must appear in cutls's start-up lines.
fn bridge_works_with(io: &str, expected_mode: &str) {
    if !lab_enabled() {
        return;
    }
    let binary = cutls_binary().expect("build cutls");
    let lab = Lab::up().expect("lab up");
    let blob = download_blob();
    let nginx = Nginx::start(
        &lab,
        lab.env.backends_v4[1],
        lab.env.backends_v6[1],
        TLS_HOST,
        &[("blob", &blob)],
    )
    .expect("start nginx");

    assert_path_closed(&lab, &nginx, "before cutls");
    lab.forget_neighbours().expect("flush neighbour caches");

    let mut cutls = Cutls::start(&lab, &binary, &["--io", io]).expect("start cutls");

    for backend in [lab.env.backends_v4[0], lab.env.backends_v6[0]] {
        assert!(
            lab.ping(backend, 3).unwrap(),
            "ping {backend} through cutls --io {io}"
        );
    }

    let target = SocketAddr::new(lab.env.backends_v4[2], TRANSFER_PORT);
    let transfer = tcp_transfer(
        &lab,
        target,
        TRANSFER_BYTES,
        Duration::from_secs(3),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|error| panic!("50 MB TCP transfer through cutls --io {io}: {error}"));
    assert_eq!(transfer.received_bytes, TRANSFER_BYTES);
    assert_eq!(
        transfer.sent_sha256, transfer.received_sha256,
        "the bytes arrive unchanged"
    );
    let mbit = TRANSFER_BYTES as f64 * 8.0 / transfer.elapsed.as_secs_f64() / 1e6;
    eprintln!(
        "--io {io}: 50 MB in {:.2} s ({mbit:.0} Mbit/s)",
        transfer.elapsed.as_secs_f64()
    );

    let addresses: [IpAddr; 2] = [lab.env.backends_v4[1], lab.env.backends_v6[1]];
    for address in addresses {
        let body = nginx
            .curl(&lab, address, "blob", Duration::from_secs(30))
            .unwrap()
            .unwrap_or_else(|error| {
                panic!(
                    "curl https://{TLS_HOST}/blob via {address} through cutls --io {io}: {error}"
                )
            });
        assert_eq!(
            sha256(&body),
            sha256(&blob),
            "TLS download via {address} arrives whole"
        );
    }

    let exit = cutls.stop().expect("stop cutls");
    assert!(
        exit.success,
        "cutls exits cleanly on SIGTERM:\n{}",
        exit.stderr
    );
    assert!(
        exit.stderr.contains(expected_mode),
        "expected {expected_mode:?} in:\n{}",
        exit.stderr
    );
    let outward = forwarded_frames(&exit.stdout, "outside -> inside");
    let inward = forwarded_frames(&exit.stdout, "inside -> outside");
    // 50 MB in at most 1514-byte frames is over 33,000 frames, plus the download's ACKs.
    assert!(
        outward > 33_000,
        "outside -> inside forwarded only {outward} frames:\n{}",
        exit.stdout
    );
    assert!(
        inward > 2_000,
        "inside -> outside forwarded only {inward} frames:\n{}",
        exit.stdout
    );
    assert!(
        !xdp_attached(&lab, &lab.env.box_outside),
        "no XDP program stays behind"
    );
    assert!(
        !xdp_attached(&lab, &lab.env.box_inside),
        "no XDP program stays behind"
    );

    assert_path_closed(&lab, &nginx, "after cutls stopped");
}

#[test]
fn bridge_with_af_xdp_native() {
    bridge_works_with("xdp", "Native attach");
}

#[test]
fn bridge_with_af_xdp_generic() {
    bridge_works_with("xdp-generic", "Generic attach");
}

#[test]
fn bridge_with_af_packet_rings() {
    bridge_works_with("packet", "TPACKET_V3/V2 rings");
}

#[test]
fn bridge_with_plain_packet_socket() {
    bridge_works_with("packet-socket", "plain socket");
}

/// `tools/lab up` twice is harmless; a cutls killed with SIGKILL leaves no XDP program behind
/// (BPF link); `tools/lab down` cleans up after it, twice in a row.
#[test]
fn lab_is_idempotent_and_survives_a_crash() {
    if !lab_enabled() {
        return;
    }
    let binary = cutls_binary().expect("build cutls");
    let lab = Lab::up().expect("lab up");
    lab_script("up").expect("second lab up");
    let backend = lab.env.backends_v4[0];
    assert!(
        !lab.ping(backend, 1).unwrap(),
        "still closed after a second up"
    );
    lab.forget_neighbours().expect("flush neighbour caches");

    let mut cutls = Cutls::start(&lab, &binary, &["--io", "xdp"]).expect("start cutls");
    assert!(
        lab.ping(backend, 2).unwrap(),
        "ping through cutls after a second up"
    );
    assert!(
        xdp_attached(&lab, &lab.env.box_outside),
        "XDP program attached while cutls runs"
    );
    cutls.signal(libc::SIGKILL);
    cutls.wait().expect("reap cutls");
    assert!(
        !xdp_attached(&lab, &lab.env.box_outside),
        "a crash detaches the XDP program"
    );
    assert!(
        !xdp_attached(&lab, &lab.env.box_inside),
        "a crash detaches the XDP program"
    );
    assert!(
        !lab.ping(backend, 1).unwrap(),
        "closed again after the crash"
    );

    lab_script("down").expect("lab down");
    lab_script("down").expect("lab down again");
    let namespaces = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let namespaces = String::from_utf8_lossy(&namespaces.stdout);
    for ns in [&lab.env.client_ns, &lab.env.box_ns, &lab.env.server_ns] {
        assert!(
            !namespaces
                .lines()
                .any(|line| line.split_whitespace().next() == Some(ns.as_str())),
            "{ns} is gone"
        );
    }
}

/// Where the driver cannot run XDP natively (a Linux bridge device here), `--io xdp` falls back
/// to generic attach; AF_XDP refuses a loop count other than the queue count, naming the port; and
/// AF_PACKET with two loops shares the traffic through a fanout group.
#[test]
fn fallbacks_and_several_loops() {
    if !lab_enabled() {
        return;
    }
    let binary = cutls_binary().expect("build cutls");
    let lab = Lab::up().expect("lab up");

    // Two bridge devices in the box stand in for ports whose driver has no native XDP.
    for device in ["fb0", "fb1"] {
        let output = lab
            .run_in(
                &lab.env.box_ns,
                "ip",
                &["link", "add", device, "type", "bridge"],
            )
            .unwrap();
        assert!(
            output.status.success(),
            "ip link add {device}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        lab.run_in(&lab.env.box_ns, "ip", &["link", "set", device, "up"])
            .unwrap();
    }
    let output = lab
        .command_in(&lab.env.box_ns, binary.to_str().expect("UTF-8 path"))
        .args(["run", "--outside", "fb0", "--inside", "fb1", "--io", "xdp"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start cutls on bridge devices");
    let mut fallback = Cutls::adopt(output).expect("cutls on bridge devices becomes ready");
    let exit = fallback.stop().expect("stop cutls");
    assert!(exit.success, "{}", exit.stderr);
    assert!(
        exit.stderr.contains("fb0: Generic attach"),
        "native refused, generic used:\n{}",
        exit.stderr
    );

    let output = lab
        .run_in(
            &lab.env.box_ns,
            binary.to_str().expect("UTF-8 path"),
            &[
                "run",
                "--outside",
                &lab.env.box_outside,
                "--inside",
                &lab.env.box_inside,
                "--cores",
                "2",
            ],
        )
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr
            .contains("outside: 1 receive queue(s) but --cores 2; AF_XDP needs one loop per queue"),
        "{stderr}"
    );

    let mut cutls =
        Cutls::start(&lab, &binary, &["--io", "packet", "--cores", "2"]).expect("start cutls");
    assert!(
        lab.ping(lab.env.backends_v4[0], 2).unwrap(),
        "ping through two AF_PACKET loops"
    );
    let target = SocketAddr::new(lab.env.backends_v4[1], TRANSFER_PORT);
    let transfer = tcp_transfer(
        &lab,
        target,
        5_000_000,
        Duration::from_secs(3),
        Duration::from_secs(10),
    )
    .expect("TCP transfer");
    assert_eq!(transfer.sent_sha256, transfer.received_sha256);
    let exit = cutls.stop().expect("stop cutls");
    assert!(exit.success, "{}", exit.stderr);
    assert!(exit.stderr.contains("with 2 loop(s)"), "{}", exit.stderr);
    assert!(
        exit.stdout.contains("loop 1 outside"),
        "both loops report:\n{}",
        exit.stdout
    );
}

/// Frames the box does not terminate cross it bit for bit, VLAN tags included: crafted frames
/// (minimum and maximum size, one 802.1Q tag, an 802.1ad + 802.1Q stack, an unknown
/// EtherType) sent raw from the client arrive unchanged at the server, through each backend.
/// The server's kernel strips the outer tag before packet sockets see it, and its AF_PACKET
/// port puts it back, as the box's does; a tag lost in the box would make the frames differ.
#[test]
fn frames_cross_bit_for_bit() {
    if !lab_enabled() {
        return;
    }
    let binary = cutls_binary().expect("build cutls");
    let lab = Lab::up().expect("lab up");
    let frames = crafted_frames(lab.env.server_mac, lab.env.client_mac);
    for io in ["xdp", "xdp-generic", "packet", "packet-socket"] {
        let mut cutls = Cutls::start(&lab, &binary, &["--io", io]).expect("start cutls");
        let received = send_and_capture(&lab, &frames).expect("send and capture");
        let exit = cutls.stop().expect("stop cutls");
        assert!(exit.success, "{}", exit.stderr);
        for (index, frame) in frames.iter().enumerate() {
            assert!(
                received.contains(frame),
                "--io {io}: frame {index} ({} bytes) did not arrive unchanged; received {} \
                 marked frames",
                frame.len(),
                received.len()
            );
        }
    }
}

/// A marker in every crafted frame, so that the capture can ignore the hosts' own traffic.
const MARKER: &[u8] = b"cutls-bit-for-bit";

fn crafted_frames(destination: [u8; 6], source: [u8; 6]) -> Vec<Vec<u8>> {
    let build = |tags: &[[u8; 4]], ether_type: u16, len: usize, seed: u8| {
        let mut frame = Vec::with_capacity(len);
        frame.extend_from_slice(&destination);
        frame.extend_from_slice(&source);
        for tag in tags {
            frame.extend_from_slice(tag);
        }
        frame.extend_from_slice(&ether_type.to_be_bytes());
        frame.extend_from_slice(MARKER);
        let mut index = 0u8;
        while frame.len() < len {
            frame.push(seed ^ index);
            index = index.wrapping_add(1);
        }
        frame
    };
    // 0x88b5: IEEE local experimental EtherType; nothing in the lab consumes it.
    let local = 0x88b5;
    let vlan_100 = [0x81, 0x00, 0x00, 0x64];
    let service_vlan_7 = [0x88, 0xa8, 0x20, 0x07];
    vec![
        build(&[], local, 60, 1),
        build(&[], local, 1514, 2),
        build(&[vlan_100], local, 64, 3),
        build(&[vlan_100], local, 1518, 4),
        build(&[service_vlan_7, vlan_100], local, 300, 5),
        build(&[], 0x0806, 60, 6),
    ]
}

/// Sends `frames` raw from the client and returns the marked frames the server receives
/// within two seconds.
fn send_and_capture(lab: &Lab, frames: &[Vec<u8>]) -> std::io::Result<Vec<Vec<u8>>> {
    use cutls_dataplane::io::af_packet::{PacketConfig, PacketMode, PacketPort};
    use cutls_dataplane::io::FrameIo;
    use cutls_tests::lab::in_namespace;

    // Plain sockets: no block timeout to wait for, and the same tag restoring as the rings.
    let config = PacketConfig {
        mode: PacketMode::Socket,
        ..PacketConfig::default()
    };
    let server_if = lab.env.server_if.clone();
    let mut capture = in_namespace(&lab.env.server_ns, move || {
        PacketPort::open(&server_if, &config)
    })?;
    let client_if = lab.env.client_if.clone();
    let mut sender = in_namespace(&lab.env.client_ns, move || {
        PacketPort::open(&client_if, &config)
    })?;
    let report = sender.send_batch(&mut frames.iter().map(Vec::as_slice))?;
    assert_eq!(
        report.sent,
        frames.len(),
        "the client sent every frame: {report:?}"
    );
    let mut received = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while received.len() < frames.len() && std::time::Instant::now() < deadline {
        let batch = capture.recv_batch(64)?;
        if batch.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        received.extend(
            batch
                .iter()
                .filter(|frame| frame.windows(MARKER.len()).any(|window| window == MARKER))
                .map(<[u8]>::to_vec),
        );
    }
    Ok(received)
}
