//! Handshake messages from a TLS 1.3 client after the handshake (RFC 8446 4.6), which the box
//! parses itself: it owns the record layer once rustls has handed the keys over.
//!
//! The box never asks for post-handshake authentication and a server receives no
//! NewSessionTicket, so KeyUpdate is the only message a client may send. A message may span
//! records (of the same key generation); a KeyUpdate precedes a key change, so it must end its
//! record (RFC 8446 5.1); and no other record type may come between the pieces of a message.

/// A KeyUpdate (handshake type 24) with its one-byte body.
const KEY_UPDATE: u8 = 24;
/// Type and 24-bit length.
const MESSAGE_HEADER_LEN: usize = 4;
const KEY_UPDATE_LEN: usize = MESSAGE_HEADER_LEN + 1;

/// The pieces of a message seen so far.
#[derive(Debug, Default)]
pub(crate) struct PostHandshake {
    pending: [u8; MESSAGE_HEADER_LEN],
    pending_len: u8,
}

/// A complete KeyUpdate: the client's next record is under its next key generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KeyUpdate {
    /// `update_requested`: the box must send a KeyUpdate of its own before its next data.
    pub(crate) update_requested: bool,
}

/// What is wrong, as the alert that says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Violation {
    /// Not a KeyUpdate, an empty fragment, a KeyUpdate that does not end its record, or another
    /// record type inside a message.
    UnexpectedMessage,
    /// A KeyUpdate whose length is not 1.
    DecodeError,
    /// A KeyUpdate whose `request_update` is neither 0 nor 1.
    IllegalParameter,
}

impl Violation {
    /// The alert description (RFC 8446 6.2).
    pub(crate) fn alert(self) -> u8 {
        match self {
            Violation::UnexpectedMessage => 10,
            Violation::DecodeError => 50,
            Violation::IllegalParameter => 47,
        }
    }
}

impl PostHandshake {
    /// The plaintext of one handshake record: the KeyUpdate it completes, if any.
    pub(crate) fn record(&mut self, fragment: &[u8]) -> Result<Option<KeyUpdate>, Violation> {
        // RFC 8446 5.1: zero-length fragments of handshake types are not allowed.
        if fragment.is_empty() {
            return Err(Violation::UnexpectedMessage);
        }
        let mut message = [0u8; KEY_UPDATE_LEN];
        let held = self.pending_len as usize;
        message[..held].copy_from_slice(&self.pending[..held]);
        let take = fragment.len().min(KEY_UPDATE_LEN - held);
        message[held..held + take].copy_from_slice(&fragment[..take]);
        let seen = held + take;
        if message[0] != KEY_UPDATE {
            return Err(Violation::UnexpectedMessage);
        }
        if seen >= MESSAGE_HEADER_LEN {
            let length = u32::from_be_bytes([0, message[1], message[2], message[3]]);
            if length != 1 {
                return Err(Violation::DecodeError);
            }
        }
        if seen < KEY_UPDATE_LEN {
            self.pending[..seen].copy_from_slice(&message[..seen]);
            self.pending_len = seen as u8;
            return Ok(None);
        }
        let request = message[MESSAGE_HEADER_LEN];
        if request > 1 {
            return Err(Violation::IllegalParameter);
        }
        if held + fragment.len() > KEY_UPDATE_LEN {
            // More after the KeyUpdate in the same record: the message precedes a key change
            // without ending its record.
            return Err(Violation::UnexpectedMessage);
        }
        self.pending_len = 0;
        Ok(Some(KeyUpdate { update_requested: request == 1 }))
    }

    /// Whether a message is partly seen: then any other record type is a violation.
    pub(crate) fn in_message(&self) -> bool {
        self.pending_len > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(records: &[&[u8]]) -> Vec<Result<Option<KeyUpdate>, Violation>> {
        let mut parser = PostHandshake::default();
        records.iter().map(|record| parser.record(record)).collect()
    }

    const REQUESTED: Option<KeyUpdate> = Some(KeyUpdate { update_requested: true });
    const NOT_REQUESTED: Option<KeyUpdate> = Some(KeyUpdate { update_requested: false });

    #[test]
    fn key_updates_whole_or_in_pieces() {
        assert_eq!(feed(&[&[24, 0, 0, 1, 0]]), [Ok(NOT_REQUESTED)]);
        assert_eq!(feed(&[&[24, 0, 0, 1, 1]]), [Ok(REQUESTED)]);
        assert_eq!(feed(&[&[24, 0, 0], &[1, 1]]), [Ok(None), Ok(REQUESTED)]);
        assert_eq!(feed(&[&[24], &[0], &[0], &[1], &[0]]), [Ok(None), Ok(None), Ok(None), Ok(None), Ok(NOT_REQUESTED)]);
        // One after the other, each in its own record.
        assert_eq!(feed(&[&[24, 0, 0, 1, 1], &[24, 0, 0, 1, 0]]), [Ok(REQUESTED), Ok(NOT_REQUESTED)]);
    }

    #[test]
    fn malformed_key_updates_get_their_alerts() {
        // request_update 2: illegal_parameter.
        assert_eq!(feed(&[&[24, 0, 0, 1, 2]]), [Err(Violation::IllegalParameter)]);
        // Empty body, or longer than one byte: decode_error.
        assert_eq!(feed(&[&[24, 0, 0, 0]]), [Err(Violation::DecodeError)]);
        assert_eq!(feed(&[&[24, 0, 0, 2, 0, 0]]), [Err(Violation::DecodeError)]);
        assert_eq!(feed(&[&[24, 0], &[0, 0]]), [Ok(None), Err(Violation::DecodeError)]);
    }

    #[test]
    fn anything_else_is_unexpected() {
        // Another message type (a NewSessionTicket, a Finished), an empty fragment, and two
        // KeyUpdates in one record (the first does not end the record before its key change).
        assert_eq!(feed(&[&[4, 0, 0, 1, 0]]), [Err(Violation::UnexpectedMessage)]);
        assert_eq!(feed(&[&[20, 0, 0, 32]]), [Err(Violation::UnexpectedMessage)]);
        assert_eq!(feed(&[&[]]), [Err(Violation::UnexpectedMessage)]);
        assert_eq!(feed(&[&[24, 0, 0, 1, 1, 24, 0, 0, 1, 1]]), [Err(Violation::UnexpectedMessage)]);
        assert_eq!(feed(&[&[24, 0, 0], &[1, 0, 24]]), [Ok(None), Err(Violation::UnexpectedMessage)]);
    }

    #[test]
    fn a_message_in_pieces_is_in_progress() {
        let mut parser = PostHandshake::default();
        assert!(!parser.in_message());
        assert_eq!(parser.record(&[24, 0]), Ok(None));
        assert!(parser.in_message());
        assert_eq!(parser.record(&[0, 1, 0]), Ok(NOT_REQUESTED));
        assert!(!parser.in_message());
    }
}
