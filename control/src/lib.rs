//! cutls-control: configuration, certificates and TLS settings, and (to come) the session
//! database, load balancing, health checks, the management socket, metrics and recovery.

pub mod config;
pub mod tls;
