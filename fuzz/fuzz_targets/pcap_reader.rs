//! The capture reader must read any bytes without panicking, yield at most one error, and
//! stop after it.
#![no_main]

use cutls_dataplane::pcap::CaptureReader;
use cutls_dataplane::wire::parse_frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(reader) = CaptureReader::new(input) else {
        return;
    };
    let mut errors = 0;
    for item in reader {
        match item {
            Ok(record) => {
                assert!(record.data.len() <= input.len());
                let _ = parse_frame(record.link_type, record.data);
            }
            Err(_) => errors += 1,
        }
    }
    assert!(errors <= 1);
});
