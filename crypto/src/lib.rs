//! cutls-crypto: the streaming TLS record engine.
//!
//! Pure computation, no I/O and no packets. It opens and seals TLS 1.2 and 1.3 records protected
//! with AES-128-GCM, AES-256-GCM or ChaCha20-Poly1305, taking a record's bytes in chunks as TCP
//! segments deliver them: any split, and any order within a record.

pub mod suite;

pub(crate) mod aead;
pub mod keys;
pub mod opener;
pub mod record;
pub mod sealer;

pub use suite::{AeadAlgorithm, CipherSuite, HashAlgorithm, ProtocolVersion, UnsupportedSuite};
pub use keys::{BadKeyLength, Secret, TrafficKeys};
pub use opener::{OpenError, OpenOutput, OpenerConfig, RecordDone, RecordOpener, Refusal, Release, ReleaseMode, ReleaseSource, Step, Stop};
pub use record::{ContentType, Framing, Header};
pub use sealer::{RecordSealer, SealError, SealedRecord};
