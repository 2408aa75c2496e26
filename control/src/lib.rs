//! cutls-control: configuration, certificates and TLS settings, the control thread with its
//! session database ([`control_plane`]), and the management protocol, socket and metrics
//! listener ([`management`]). To come: load balancing by load, health checks, reload.

pub mod config;
pub mod control_plane;
pub mod management;
pub mod tls;
