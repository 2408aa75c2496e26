//! `cutls decrypt` on bad input: a truncated capture, a corrupted record, a key log without the
//! connection's keys or with junk lines. Each gives a clear status for the connection, the rest
//! of the capture is still processed, and the run succeeds because the file was read.

use std::path::{Path, PathBuf};

use cutls_tests::synthetic::{v4, write_capture, TEST_SIZES};
use cutls_tools::decrypt::{run, Options, Summary};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cutls-bad-input-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn decrypt(capture: &Path, keylog: &Path, out: &Path) -> (Summary, String) {
    let mut report = Vec::new();
    let options = Options { capture: capture.into(), keylog: Some(keylog.into()), out: out.into() };
    let summary = run(&options, &mut report).expect("the capture is readable");
    (summary, String::from_utf8(report).expect("UTF-8"))
}

fn status(report: &str) -> String {
    let start = report.find("\"status\":\"").expect("status field") + 10;
    report[start..start + report[start..].find('"').expect("closing quote")].to_string()
}

#[test]
fn truncated_capture_reports_a_gap_and_the_read_error() {
    let dir = temp("truncated");
    let (capture, keylog, _, _) = write_capture(&dir, 0x1301, &TEST_SIZES, v4(1, 1000), v4(2, 443));
    let bytes = std::fs::read(&capture).expect("capture");
    let cut = dir.join("cut.pcap");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).expect("write");
    let (summary, report) = decrypt(&cut, &keylog, &dir.join("out"));
    assert!(summary.capture_error.is_some(), "the truncation is reported");
    assert!(status(&report).starts_with("gap at seq "), "{report}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn corrupted_record_is_a_tag_failure() {
    let dir = temp("corrupt");
    let (capture, keylog, _, _) = write_capture(&dir, 0xcca8, &TEST_SIZES, v4(3, 1000), v4(4, 443));
    let mut bytes = std::fs::read(&capture).expect("capture");
    // Deep in the last frame's TCP payload (the frames end with application records).
    let at = bytes.len() - 20;
    bytes[at] ^= 0x40;
    std::fs::write(&capture, &bytes).expect("write");
    let (_, report) = decrypt(&capture, &keylog, &dir.join("out"));
    assert!(status(&report).starts_with("tag failure at record "), "{report}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn missing_keys_and_junk_key_log_lines() {
    let dir = temp("keys");
    let (capture, keylog, c2s, _) = write_capture(&dir, 0x1302, &TEST_SIZES, v4(5, 1000), v4(6, 443));
    let empty = dir.join("empty.keys");
    std::fs::write(&empty, "# nothing here\nCLIENT_RANDOM zz 00\n").expect("write");
    let (_, report) = decrypt(&capture, &empty, &dir.join("out1"));
    assert_eq!(status(&report), "no keys", "{report}");

    let junk = dir.join("junk.keys");
    let mut text = String::from("garbage\n\u{0}\u{1}binary junk\nCLIENT_RANDOM 00\n");
    text.push_str(&std::fs::read_to_string(&keylog).expect("key log"));
    std::fs::write(&junk, text).expect("write");
    let out = dir.join("out2");
    let (_, report) = decrypt(&capture, &junk, &out);
    assert_eq!(status(&report), "ok", "{report}");
    let c2s_file = std::fs::read_dir(&out)
        .expect("out")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "c2s"))
        .expect("c2s file");
    assert!(std::fs::read(c2s_file).expect("read") == c2s.data);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unreadable_capture_is_an_error() {
    let dir = temp("unreadable");
    let not_a_capture = dir.join("text.pcap");
    std::fs::write(&not_a_capture, "this is not a capture").expect("write");
    let options = Options { capture: not_a_capture, keylog: None, out: dir.join("out") };
    assert!(run(&options, &mut Vec::new()).is_err());
    let _ = std::fs::remove_dir_all(dir);
}
