//! Cross-crate tests live in `tests/tests/`; this library holds their shared helpers.

pub mod lab;
pub mod lab_tls;
pub mod synthetic;
