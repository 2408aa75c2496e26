//! Every capture in `shared/captures/manifest.tsv` read end to end and every frame decoded,
//! with counts checked against what tshark 4.0 reports for the same files.

use std::collections::BTreeSet;

use super::{Capture, CaptureFormat, LinkType};
use crate::wire::{parse_frame, IpVersion, SeqNumber};

const CAPTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/captures/");

/// Per capture, as tshark 4.0 counts it: (path, frames, TCP segments, TCP payload bytes,
/// IPv6 frames, TCP segments whose checksum tshark finds bad).
const FACTS: [(&str, usize, usize, usize, usize, usize); 62] = [
    (
        "hotplace/http_curl_http1_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256.pcapng",
        21,
        21,
        2091,
        21,
        0,
    ),
    ("hotplace/http_curl_http1_tls12.pcapng", 21, 21, 6079, 0, 9),
    ("hotplace/http_http1.pcapng", 74, 74, 16389, 74, 0),
    ("hotplace/http_http2.pcapng", 157, 157, 22524, 18, 0),
    (
        "hotplace/tls12_tls12_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256.pcapng",
        21,
        21,
        1369,
        21,
        0,
    ),
    (
        "hotplace/tls12_tls12_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384.pcapng",
        21,
        21,
        1366,
        21,
        0,
    ),
    (
        "hotplace/tls12_tls12_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256.pcapng",
        21,
        21,
        1329,
        21,
        0,
    ),
    (
        "hotplace/tls12_tls12renogotiation.pcapng",
        31,
        31,
        3974,
        31,
        0,
    ),
    (
        "hotplace/tls13_tls13_TLS_AES_128_CCM_SHA256_X25519MLKEM768.pcapng",
        23,
        23,
        3982,
        23,
        0,
    ),
    (
        "hotplace/tls13_tls13_TLS_AES_128_GCM_SHA256.pcapng",
        23,
        23,
        1729,
        23,
        0,
    ),
    (
        "hotplace/tls13_tls13_TLS_AES_256_GCM_SHA384_SecP384r1MLKEM1024.pcapng",
        19,
        19,
        5062,
        19,
        0,
    ),
    (
        "hotplace/tls13_tls13_TLS_CHACHA20_POLY1305_SHA256.pcapng",
        23,
        23,
        1729,
        23,
        0,
    ),
    ("illustrated-tls13/capture.pcap", 22, 22, 2224, 0, 22),
    (
        "lbirchler-tls-decryption/tls2_dump.pcapng",
        1095,
        1095,
        191644,
        0,
        1022,
    ),
    (
        "lbirchler-tls-decryption/tls3_tls3.cryptohack.org.pcapng",
        33,
        29,
        6365,
        0,
        14,
    ),
    (
        "voev-snet/TLS1_2_AES128-CCM8_auth.pcap",
        34,
        34,
        6086,
        0,
        34,
    ),
    ("voev-snet/TLS1_2_AES128-CCM_auth.pcap", 34, 34, 6190, 0, 34),
    (
        "voev-snet/TLS1_2_AES128-GCM-SHA256_auth.pcap",
        32,
        32,
        6161,
        0,
        32,
    ),
    (
        "voev-snet/TLS1_2_AES256-CCM8_auth.pcap",
        34,
        34,
        6086,
        0,
        34,
    ),
    ("voev-snet/TLS1_2_AES256-CCM_auth.pcap", 34, 34, 6190, 0, 34),
    (
        "voev-snet/TLS1_2_AES256-GCM-SHA384_auth.pcap",
        34,
        34,
        6190,
        0,
        34,
    ),
    (
        "voev-snet/TLS1_2_DHE-RSA-AES128-CCM8_auth.pcap",
        33,
        33,
        7108,
        0,
        33,
    ),
    (
        "voev-snet/TLS1_2_DHE-RSA-AES128-CCM_auth.pcap",
        34,
        34,
        7204,
        0,
        34,
    ),
    (
        "voev-snet/TLS1_2_DHE-RSA-AES128-GCM-SHA256_auth.pcap",
        33,
        33,
        7204,
        0,
        33,
    ),
    (
        "voev-snet/TLS1_2_DHE-RSA-AES256-CCM8_auth.pcap",
        33,
        33,
        7108,
        0,
        33,
    ),
    (
        "voev-snet/TLS1_2_DHE-RSA-AES256-CCM_auth.pcap",
        33,
        33,
        7204,
        0,
        33,
    ),
    (
        "voev-snet/TLS1_2_DHE-RSA-AES256-GCM-SHA384_auth.pcap",
        33,
        33,
        7204,
        0,
        33,
    ),
    (
        "voev-snet/TLS1_2_DHE-RSA-CHACHA20-POLY1305_auth.pcap",
        33,
        33,
        7108,
        0,
        33,
    ),
    (
        "voev-snet/TLS1_2_ECDHE-ECDSA-AES128-CCM8_auth.pcap",
        34,
        34,
        4607,
        0,
        34,
    ),
    (
        "voev-snet/TLS1_2_ECDHE-ECDSA-AES128-CCM_auth.pcap",
        34,
        34,
        4714,
        0,
        34,
    ),
    (
        "voev-snet/TLS1_2_ECDHE-ECDSA-AES128-GCM-SHA256_auth.pcap",
        34,
        34,
        4712,
        0,
        34,
    ),
    (
        "voev-snet/TLS1_2_ECDHE-ECDSA-AES256-CCM8_auth.pcap",
        34,
        34,
        4608,
        0,
        34,
    ),
    (
        "voev-snet/TLS1_2_ECDHE-ECDSA-AES256-CCM_auth.pcap",
        32,
        32,
        4684,
        0,
        32,
    ),
    (
        "voev-snet/TLS1_2_ECDHE-ECDSA-AES256-GCM-SHA384_auth.pcap",
        34,
        34,
        4714,
        0,
        34,
    ),
    (
        "voev-snet/TLS1_2_ECDHE-ECDSA-CHACHA20-POLY1305_auth.pcap",
        34,
        34,
        4609,
        0,
        34,
    ),
    (
        "voev-snet/TLS1_2_ECDHE-RSA-AES128-GCM-SHA256_auth.pcap",
        32,
        32,
        6273,
        0,
        32,
    ),
    (
        "voev-snet/TLS1_2_ECDHE-RSA-AES256-GCM-SHA384_auth.pcap",
        34,
        34,
        6302,
        0,
        34,
    ),
    (
        "voev-snet/TLS1_2_ECDHE-RSA-CHACHA20-POLY1305_auth.pcap",
        32,
        32,
        6177,
        0,
        32,
    ),
    (
        "voev-snet/TLS1_3_TLS_AES_128_CCM_8_SHA256.pcap",
        35,
        35,
        4412,
        0,
        35,
    ),
    (
        "voev-snet/TLS1_3_TLS_AES_128_CCM_SHA256.pcap",
        35,
        35,
        4556,
        0,
        35,
    ),
    (
        "voev-snet/TLS1_3_TLS_AES_128_GCM_SHA256.pcap",
        35,
        35,
        4556,
        0,
        35,
    ),
    (
        "voev-snet/TLS1_3_TLS_AES_256_GCM_SHA384.pcap",
        35,
        35,
        4588,
        0,
        35,
    ),
    (
        "voev-snet/TLS1_3_TLS_CHACHA20_POLY1305_SHA256.pcap",
        35,
        35,
        4556,
        0,
        35,
    ),
    ("voev-snet/mTLS1_2_ECDSA.pcap", 35, 35, 5121, 0, 35),
    ("voev-snet/mTLS1_2_Ed25519.pcap", 35, 35, 4854, 0, 35),
    ("voev-snet/mTLS1_2_Ed448.pcap", 35, 35, 5250, 0, 35),
    ("voev-snet/mTLS1_3_ECDSA.pcap", 35, 35, 5353, 0, 35),
    ("voev-snet/mTLS1_3_Ed25519.pcap", 33, 33, 5063, 0, 33),
    ("voev-snet/mTLS1_3_Ed448.pcap", 33, 33, 5460, 0, 33),
    ("voev-snet/mTLS1_3_RSA.pcap", 33, 33, 7282, 0, 33),
    ("voev-snet/tls1.2_aes256.pcap", 22, 22, 1644, 0, 21),
    ("voev-snet/tls1.3_aes128.pcap", 28, 28, 2046, 0, 27),
    ("voev-snet/tls1.3_aes256gcm.pcap", 37, 37, 2289, 0, 37),
    ("voev-snet/tls1.3_ccm.pcap", 24, 24, 1994, 0, 23),
    ("voev-snet/tls1.3_ccm8.pcap", 24, 24, 1899, 0, 23),
    ("voev-snet/tls1.3_chacha.pcap", 27, 27, 2046, 0, 27),
    ("voev-snet/tls1.3_curl_google.pcap", 38, 34, 23437, 0, 25),
    (
        "voev-snet/tls1.3_keyupdates_aes256.pcap",
        38,
        38,
        2287,
        0,
        38,
    ),
    (
        "voev-snet/tls1.3_session_resumption.pcap",
        22,
        22,
        1221,
        0,
        21,
    ),
    (
        "wireshark-via-wirerust/tls13-rfc8446.pcap",
        13,
        13,
        3068,
        0,
        13,
    ),
    ("zeek/tls-1.2-stream-keylog.pcap", 237, 237, 162548, 0, 0),
    ("zeek/tls12-decryption.pcap", 16, 16, 4754, 0, 11),
];

fn read(path: &str) -> Vec<u8> {
    let full = format!("{CAPTURES}{path}");
    std::fs::read(&full).unwrap_or_else(|error| panic!("{full}: {error}"))
}

#[test]
fn the_facts_cover_every_capture_in_the_manifest() {
    let manifest = String::from_utf8(read("manifest.tsv")).unwrap();
    let listed: BTreeSet<&str> = manifest
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    let known: BTreeSet<&str> = FACTS.iter().map(|fact| fact.0).collect();
    assert_eq!(listed, known);
}

#[test]
fn every_capture_reads_completely_and_every_frame_decodes() {
    for (path, frames, tcp_segments, tcp_payload, ipv6_frames, bad_checksums) in FACTS {
        let bytes = read(path);
        let capture = Capture::read(&bytes).unwrap_or_else(|error| panic!("{path}: {error}"));
        assert_eq!(capture.error, None, "{path}");
        assert_eq!(capture.records.len(), frames, "{path}: frames");
        let expected_format = path.ends_with(".pcapng");
        assert_eq!(
            capture.format == CaptureFormat::PcapNg,
            expected_format,
            "{path}"
        );

        let (mut segments, mut payload, mut ipv6, mut bad) = (0, 0, 0, 0);
        for (index, record) in capture.records.iter().enumerate() {
            assert_eq!(
                record.data.len(),
                record.orig_len as usize,
                "{path}: nothing is cut"
            );
            let frame = parse_frame(record.link_type, record.data)
                .unwrap_or_else(|error| panic!("{path} frame {}: {error}", index + 1));
            if frame.ip().is_some_and(|ip| ip.version == IpVersion::V6) {
                ipv6 += 1;
            }
            if let Some(tcp) = frame.tcp() {
                segments += 1;
                payload += tcp.payload.len();
                bad += usize::from(!tcp.checksum_valid);
            }
        }
        assert_eq!(segments, tcp_segments, "{path}: TCP segments");
        assert_eq!(payload, tcp_payload, "{path}: TCP payload bytes");
        assert_eq!(ipv6, ipv6_frames, "{path}: IPv6 frames");
        assert_eq!(bad, bad_checksums, "{path}: bad TCP checksums");
    }
}

#[test]
fn exact_facts_of_a_few_captures() {
    // tshark: zeek/tls12-decryption.pcap frame 1 at 1620772652.430127, Ethernet, the SYN
    // 192.168.100.70:48216 -> 193.99.144.80:443 with raw seq 671564479.
    let bytes = read("zeek/tls12-decryption.pcap");
    let capture = Capture::read(&bytes).unwrap();
    assert_eq!(
        capture.format,
        CaptureFormat::Pcap {
            nanosecond: false,
            big_endian: false
        }
    );
    let first = capture.records[0];
    assert_eq!(first.link_type, LinkType::Ethernet);
    assert_eq!(first.timestamp_ns, 1_620_772_652_430_127_000);
    let tcp = *parse_frame(first.link_type, first.data)
        .unwrap()
        .tcp()
        .unwrap();
    assert_eq!(
        (tcp.src_port, tcp.dst_port, tcp.seq_number),
        (48216, 443, SeqNumber(671_564_479))
    );

    // tshark: the cryptohack capture is Linux SLL, frame 1 at 1669952442.049851 is a DNS
    // query over UDP (81 bytes).
    let bytes = read("lbirchler-tls-decryption/tls3_tls3.cryptohack.org.pcapng");
    let capture = Capture::read(&bytes).unwrap();
    let first = capture.records[0];
    assert_eq!(first.link_type, LinkType::LinuxSll);
    assert_eq!(first.timestamp_ns, 1_669_952_442_049_851_000);
    assert_eq!(first.data.len(), 81);
    assert!(parse_frame(first.link_type, first.data)
        .unwrap()
        .tcp()
        .is_none());

    // tshark: hotplace/http_http2.pcapng is LINKTYPE_NULL, frame 1 at 1749306150.8789.
    let bytes = read("hotplace/http_http2.pcapng");
    let capture = Capture::read(&bytes).unwrap();
    assert_eq!(capture.records[0].link_type, LinkType::Null);
    assert_eq!(capture.records[0].timestamp_ns, 1_749_306_150_878_900_000);
    assert!(capture.secrets.is_empty());
}

#[test]
fn every_truncation_of_a_real_capture_keeps_the_records_before_it() {
    let bytes = read("zeek/tls12-decryption.pcap");
    let whole = Capture::read(&bytes).unwrap().records;
    // Where each record ends: a cut there is a clean, shorter file.
    let record_ends: BTreeSet<usize> = whole
        .iter()
        .scan(24, |end, record| {
            *end += 16 + record.data.len();
            Some(*end)
        })
        .chain([24])
        .collect();
    for cut in 24..bytes.len() {
        let capture = Capture::read(&bytes[..cut]).unwrap();
        assert_eq!(capture.records[..], whole[..capture.records.len()]);
        assert_eq!(
            capture.error.is_none(),
            record_ends.contains(&cut),
            "cut at {cut}"
        );
    }
}
