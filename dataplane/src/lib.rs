//! cutls-dataplane: frame I/O, packet views, the flow table, the per-core poll loop and the
//! session engine. See `docs/architecture.md`.
#![forbid(unsafe_op_in_unsafe_fn)]

pub mod bridge;
pub mod health;
pub mod io;
pub mod pcap;
pub mod session;
pub mod steer;
pub mod wire;
