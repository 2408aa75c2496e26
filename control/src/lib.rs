//! cutls-control: configuration, certificates and TLS settings, the control thread with its
//! session database ([`control_plane`]), and the management protocol, socket and metrics
//! listener ([`management`]), the process's log ([`logging`]) and what it tells systemd
//! ([`service`]).

pub mod config;
pub mod control_plane;
pub mod logging;
pub mod management;
pub mod service;
pub mod tls;
