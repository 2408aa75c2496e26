//! cutls-control: configuration, certificates, the session database, load balancing, health
//! checks, the management socket, metrics and recovery. Nothing here yet: see the README's
//! "What does not work yet".
