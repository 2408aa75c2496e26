//! TLS 1.2 DEFLATE record compression (RFC 3749), which old captures still show: one zlib
//! stream per direction, each record's fragment ending on a sync flush.

use miniz_oxide::inflate::stream::{inflate, InflateState};
use miniz_oxide::{DataFormat, MZError, MZFlush, MZStatus};

/// The compression method the ServerHello chose.
pub const METHOD_DEFLATE: u8 = 1;

pub struct Inflater {
    state: Box<InflateState>,
}

impl Inflater {
    pub fn new() -> Inflater {
        Inflater { state: InflateState::new_boxed(DataFormat::Zlib) }
    }

    /// Inflates one record's fragment, appending the plaintext to `out`.
    pub fn record(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
        let mut buffer = [0u8; 16384];
        loop {
            let result = inflate(&mut self.state, input, &mut buffer, MZFlush::Sync);
            out.extend_from_slice(&buffer[..result.bytes_written]);
            input = &input[result.bytes_consumed..];
            match result.status {
                Ok(MZStatus::Ok) | Ok(MZStatus::StreamEnd) => {
                    if input.is_empty() && result.bytes_written < buffer.len() {
                        return Ok(());
                    }
                }
                // No progress possible: all input used and the output flushed.
                Err(MZError::Buf) if input.is_empty() => return Ok(()),
                Ok(MZStatus::NeedDict) | Err(_) => return Err("corrupt compressed record"),
            }
        }
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use miniz_oxide::deflate::core::{compress, create_comp_flags_from_zip_params, CompressorOxide, TDEFLFlush};

    /// Compresses `records` as one zlib stream with a sync flush after each, as TLS does.
    fn deflate_records(records: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut compressor = CompressorOxide::new(create_comp_flags_from_zip_params(6, 15, 0));
        records
            .iter()
            .map(|record| {
                let mut out = vec![0u8; record.len() + 64];
                let (_, _, written) = compress(&mut compressor, record, &mut out, TDEFLFlush::Sync);
                out.truncate(written);
                out
            })
            .collect()
    }

    #[test]
    fn records_of_one_stream_inflate_one_by_one() {
        let first = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n".as_slice();
        let second = b"GET /again HTTP/1.1\r\nHost: example\r\n\r\n".as_slice();
        let compressed = deflate_records(&[first, second]);
        let mut inflater = Inflater::new();
        let mut out = Vec::new();
        inflater.record(&compressed[0], &mut out).unwrap();
        assert_eq!(out, first);
        out.clear();
        inflater.record(&compressed[1], &mut out).unwrap();
        assert_eq!(out, second);
        assert!(Inflater::new().record(b"\x78\x9c\xff\xff\xff", &mut Vec::new()).is_err());
    }
}
