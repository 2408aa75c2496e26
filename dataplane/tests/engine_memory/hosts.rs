//! The two fake hosts: a client on the outside port (ARP/NDP for the VIP, TCP, a rustls
//! client that uploads a request and checks the response) and the backend servers on the inside
//! port (answer ARP/NDP for their addresses, accept the engine's replayed SYN, check the
//! plaintext request byte for byte, answer with a known response).

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use cutls_dataplane::wire::{
    parse_frame, ArpOperation, EthernetAddress, LinkType, NetworkPayload, SeqNumber, TcpFlags, TcpSegment, Transport,
};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use super::frames::{
    arp_frame, macs, ndp_fields, ndp_frame, solicited_node, summarize, tcp_frame, Outgoing, ICMPV6_NEIGHBOR_ADVERTISEMENT,
    ICMPV6_NEIGHBOR_SOLICITATION, MAX_FRAME,
};
use super::tcp::{Tcp, TcpConfig};
use super::{kind, Rng};

const MS: u64 = 1_000_000;
/// How much a host lets its socket send buffer hold before the application waits.
const SEND_BUFFER: usize = 512 * 1024;
/// The largest plaintext write handed to rustls at once (rustls buffers 64 KiB by default).
const WRITE_CHUNK: usize = 32 * 1024;

/// What one client connection does.
pub struct ConnectionPlan {
    pub config: Arc<ClientConfig>,
    pub request: Vec<u8>,
    pub response: Vec<u8>,
    /// Write the request only once the handshake is over (by default it is written at once and
    /// rustls sends it right after the client's Finished, often in the same segment).
    pub write_after_handshake: bool,
    /// With `write_after_handshake`: wait this long more, so that the backend connection is
    /// surely up before the request arrives.
    pub hold_request_ns: u64,
    /// Flip one bit of an application data record's body before it leaves the client.
    pub corrupt: Option<Corruption>,
    /// Plain TCP: the request goes out as it is and the response comes back as it is (a
    /// passthrough listener); `config` is not used.
    pub plain: bool,
    /// How the client closes once the exchange is done.
    pub close: CloseStyle,
}

/// How a client ends its connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CloseStyle {
    /// close_notify, then FIN at once (curl, openssl s_client).
    #[default]
    Eager,
    /// close_notify, then wait for the peer's close_notify, then FIN (OpenSSL's bidirectional
    /// `SSL_shutdown`, Python's `SSLSocket.unwrap()` then `shutdown(SHUT_WR)`).
    AwaitCloseNotify,
    /// FIN without close_notify.
    FinOnly,
}

#[derive(Clone, Copy, Debug)]
pub struct Corruption {
    /// Which application data record of the request (0 = the first).
    pub record: usize,
    /// Offset in the record's body (after the 5-byte header).
    pub body_offset: usize,
}

/// A client connection: TCP, rustls, the request it sends and the response it expects.
pub struct ClientSession {
    pub tcp: Tcp,
    pub tls: ClientConnection,
    request: Vec<u8>,
    request_written: usize,
    expected_response: Vec<u8>,
    pub response: Vec<u8>,
    pub tls_error: Option<rustls::Error>,
    pub close_notify_received: bool,
    pub eof_without_close_notify: bool,
    close_notify_sent: bool,
    close: CloseStyle,
    eof_signalled: bool,
    write_after_handshake: bool,
    hold_request_ns: u64,
    corrupt: Option<Corruption>,
    application_data_start: Option<usize>,
    /// Stream offset of the byte the harness flipped.
    pub corrupted_at: Option<usize>,
    pub handshake_done_at: Option<u64>,
    /// The first byte of the response that differs from what the backend sent.
    pub mismatch: Option<String>,
    plain: bool,
}

impl ClientSession {
    pub fn request_len(&self) -> usize {
        self.request.len()
    }

    pub fn expected_response(&self) -> &[u8] {
        &self.expected_response
    }

    /// Moves bytes between TCP and rustls and runs the application.
    fn pump(&mut self, now: u64) {
        if self.plain {
            self.pump_plain();
            return;
        }
        let incoming = self.tcp.readable().to_vec();
        self.tcp.consume(incoming.len());
        let mut slice = &incoming[..];
        let mut rounds = 0;
        while !slice.is_empty() && self.tls_error.is_none() && !self.close_notify_received {
            rounds += 1;
            assert!(rounds < 100_000, "harness: rustls does not take bytes");
            match self.tls.read_tls(&mut slice) {
                Ok(0) => break,
                Ok(_) => {}
                // The plaintext buffer is full: read it below, then feed more.
                Err(_) => {}
            }
            if let Err(error) = self.tls.process_new_packets() {
                self.tls_error = Some(error);
            }
            self.read_plaintext();
        }
        if self.tcp.fin_received() && !self.eof_signalled && self.tls_error.is_none() {
            self.eof_signalled = true;
            let _ = self.tls.read_tls(&mut &[][..]);
            if let Err(error) = self.tls.process_new_packets() {
                self.tls_error = Some(error);
            }
            self.read_plaintext();
        }

        let handshaking = self.tls.is_handshaking();
        if !handshaking && self.handshake_done_at.is_none() {
            self.handshake_done_at = Some(now);
        }
        let writable = self.tls_error.is_none() && self.tcp.state != super::tcp::State::Reset && !self.close_notify_sent;
        let may_write = !self.write_after_handshake
            || self.handshake_done_at.is_some_and(|done| now >= done + self.hold_request_ns);
        if writable && self.request_written < self.request.len() && may_write {
            if self.corrupt.is_some() && self.application_data_start.is_none() {
                self.flush_tls();
                self.application_data_start = Some(self.tcp.written());
            }
            while self.request_written < self.request.len() && self.tcp.backlog() < SEND_BUFFER {
                let end = self.request.len().min(self.request_written + WRITE_CHUNK);
                match self.tls.writer().write(&self.request[self.request_written..end]) {
                    Ok(0) | Err(_) => break,
                    Ok(written) => self.request_written += written,
                }
                self.flush_tls();
            }
        }
        if writable
            && !handshaking
            && self.request_written == self.request.len()
            && self.response.len() >= self.expected_response.len()
        {
            // The whole exchange is done: close like a polite client (close_notify, then FIN).
            if self.close != CloseStyle::FinOnly {
                self.tls.send_close_notify();
            }
            self.close_notify_sent = true;
        }
        self.flush_tls();
        self.corrupt_if_planned();
        let fatal = self.tls_error.is_some();
        let may_close = self.close != CloseStyle::AwaitCloseNotify || self.close_notify_received || fatal;
        if (self.close_notify_sent || fatal) && may_close && !self.tls.wants_write() && self.tcp.state != super::tcp::State::Reset {
            // After a fatal alert the socket is closed as well.
            if !self.tcp.fin_sent_and_acked() {
                self.close_tcp();
            }
        }
    }

    /// Plain TCP: the response as it comes, the request as the send buffer takes it, then a
    /// FIN once both are whole.
    fn pump_plain(&mut self) {
        let incoming = self.tcp.readable().to_vec();
        self.tcp.consume(incoming.len());
        let at = self.response.len();
        check_stream(&mut self.mismatch, "response", &self.expected_response, at, &incoming, None);
        self.response.extend_from_slice(&incoming);
        if self.tcp.state == super::tcp::State::Reset || self.tcp.fin_queued() {
            return;
        }
        while self.request_written < self.request.len() && self.tcp.backlog() < SEND_BUFFER {
            let end = self.request.len().min(self.request_written + WRITE_CHUNK);
            self.tcp.write(&self.request[self.request_written..end]);
            self.request_written = end;
        }
        if self.request_written == self.request.len() && self.response.len() >= self.expected_response.len() {
            self.close_tcp();
        }
    }

    fn close_tcp(&mut self) {
        if !self.tcp.fin_queued() {
            self.tcp.close();
        }
    }

    fn read_plaintext(&mut self) {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            match self.tls.reader().read(&mut buffer) {
                Ok(0) => {
                    self.close_notify_received = true;
                    return;
                }
                Ok(len) => {
                    let at = self.response.len();
                    check_stream(&mut self.mismatch, "response", &self.expected_response, at, &buffer[..len], None);
                    self.response.extend_from_slice(&buffer[..len]);
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == ErrorKind::UnexpectedEof => {
                    self.eof_without_close_notify = true;
                    return;
                }
                Err(error) => {
                    self.mismatch.get_or_insert(format!("reading plaintext: {error}"));
                    return;
                }
            }
        }
    }

    fn flush_tls(&mut self) {
        let mut bytes = Vec::new();
        while self.tls.wants_write() {
            if self.tls.write_tls(&mut bytes).is_err() {
                break;
            }
        }
        if !bytes.is_empty() && self.tcp.state != super::tcp::State::Reset && !self.tcp.fin_queued() {
            self.tcp.write(&bytes);
        }
    }

    /// Flips one bit in the body of a planned record, before TCP has sent any of it. Every
    /// (re)transmission then carries the same bad byte with a good TCP checksum, as an attacker
    /// on the path would send it.
    fn corrupt_if_planned(&mut self) {
        let (Some(plan), Some(start)) = (self.corrupt, self.application_data_start) else { return };
        if self.corrupted_at.is_some() {
            return;
        }
        let highest_sent = self.tcp.highest_sent();
        let stream = self.tcp.send_stream_mut();
        let mut offset = start;
        for index in 0.. {
            if offset + 5 > stream.len() {
                return;
            }
            let len = usize::from(u16::from_be_bytes([stream[offset + 3], stream[offset + 4]]));
            if offset + 5 + len > stream.len() {
                return;
            }
            if index == plan.record {
                assert!(plan.body_offset < len, "harness: record {index} has only {len} body bytes");
                let at = offset + 5 + plan.body_offset;
                assert!(at >= highest_sent, "harness: the byte to corrupt was already sent");
                stream[at] ^= 0x01;
                self.corrupted_at = Some(at);
                return;
            }
            offset += 5 + len;
        }
    }

    /// Closed both ways or reset: nothing more will happen on this connection.
    pub fn is_finished(&self) -> bool {
        self.tcp.is_finished()
    }

    pub fn describe(&self) -> String {
        format!(
            "client {}: tls handshaking={} suite={:?} error={:?} | request {}/{} written | response {}/{} received, close_notify={} eof_without_close_notify={} mismatch={:?}\n    tcp {}",
            self.tcp.local,
            self.tls.is_handshaking(),
            self.tls.negotiated_cipher_suite().map(|s| s.suite()),
            self.tls_error,
            self.request_written,
            self.request.len(),
            self.response.len(),
            self.expected_response.len(),
            self.close_notify_received,
            self.eof_without_close_notify,
            self.mismatch,
            self.tcp.describe()
        )
    }
}

/// The client machine: one MAC, one address, any number of connections to the VIP.
pub struct ClientHost {
    pub mac: EthernetAddress,
    pub ip: IpAddr,
    pub vip: SocketAddr,
    pub vip_mac: Option<EthernetAddress>,
    resolution_sent_at: Option<u64>,
    pub resolutions_sent: u32,
    pub sessions: Vec<ClientSession>,
    next_port: u16,
    rng: Rng,
    pub tcp_config: TcpConfig,
    /// Host-level problems: bad checksums, oversized frames, malformed NDP.
    pub violations: Vec<String>,
    /// Deviations a Linux host would tolerate.
    pub remarks: Vec<String>,
    /// Frames that reached the client but belong to no connection.
    pub stray: Vec<String>,
}

impl ClientHost {
    pub fn new(mac: EthernetAddress, ip: IpAddr, vip: SocketAddr, seed: u64) -> ClientHost {
        ClientHost {
            mac,
            ip,
            vip,
            vip_mac: None,
            resolution_sent_at: None,
            resolutions_sent: 0,
            sessions: Vec::new(),
            next_port: 40000,
            rng: Rng::new(seed ^ 0xc1_1e47),
            tcp_config: TcpConfig::linux(ip),
            violations: Vec::new(),
            remarks: Vec::new(),
            stray: Vec::new(),
        }
    }

    /// Opens a connection; returns its index in [`ClientHost::sessions`].
    pub fn open(&mut self, plan: ConnectionPlan) -> usize {
        // Records are counted from the first byte written after the handshake.
        assert!(plan.corrupt.is_none() || plan.write_after_handshake, "harness: corrupt needs write_after_handshake");
        let port = self.next_port;
        self.next_port += 1;
        let local = SocketAddr::new(self.ip, port);
        let iss = self.tcp_config.fixed_iss.unwrap_or(self.rng.next() as u32);
        let ts_offset = self.rng.next() as u32;
        let tcp = Tcp::connect(self.tcp_config, local, self.vip, iss, ts_offset);
        let tls = ClientConnection::new(plan.config, ServerName::try_from("localhost").expect("name")).expect("client");
        self.sessions.push(ClientSession {
            tcp,
            tls,
            request: plan.request,
            request_written: 0,
            expected_response: plan.response,
            response: Vec::new(),
            tls_error: None,
            close_notify_received: false,
            eof_without_close_notify: false,
            close_notify_sent: false,
            close: plan.close,
            eof_signalled: false,
            write_after_handshake: plan.write_after_handshake,
            hold_request_ns: plan.hold_request_ns,
            corrupt: plan.corrupt,
            application_data_start: None,
            corrupted_at: None,
            handshake_done_at: None,
            mismatch: None,
            plain: plan.plain,
        });
        self.sessions.len() - 1
    }

    pub fn address_of(&self, session: usize) -> SocketAddr {
        self.sessions[session].tcp.local
    }

    /// A frame from the wire (the engine's outside port).
    pub fn receive(&mut self, now: u64, frame: &[u8]) {
        let parsed = match parse_frame(LinkType::Ethernet, frame) {
            Ok(parsed) => parsed,
            Err(error) => {
                self.violations.push(format!("[{}] unparsable frame to the client ({error}): {frame:02x?}", kind::TCP));
                return;
            }
        };
        if frame.len() > MAX_FRAME {
            self.violations.push(format!("[{}] frame of {} bytes exceeds the 1500-byte MTU: {}", kind::MTU, frame.len(), summarize(frame)));
        }
        let (source_mac, destination_mac) = macs(&parsed.link);
        if destination_mac != self.mac && !destination_mac.is_multicast() {
            self.stray.push(format!("not for the client's MAC: {}", summarize(frame)));
            return;
        }
        let NetworkPayload::Ip { ip, transport } = &parsed.network else {
            if let NetworkPayload::Arp(arp) = &parsed.network {
                if arp.operation == ArpOperation::Reply
                    && IpAddr::V4(arp.sender_protocol_addr) == self.vip.ip()
                    && IpAddr::V4(arp.target_protocol_addr) == self.ip
                {
                    if arp.sender_hardware_addr != source_mac {
                        self.violations.push(format!("[{}] ARP reply's sender MAC differs from its frame's: {}", kind::TCP, summarize(frame)));
                    }
                    self.vip_mac = Some(arp.sender_hardware_addr);
                    return;
                }
            }
            self.stray.push(summarize(frame));
            return;
        };
        if ip.header_checksum_valid == Some(false) {
            self.violations.push(format!("[{}] bad IPv4 header checksum: {}", kind::TCP, summarize(frame)));
            return;
        }
        match transport {
            Transport::Icmpv6(message) => match ndp_fields(message.message) {
                Some((ICMPV6_NEIGHBOR_ADVERTISEMENT, target, lladdr)) if IpAddr::V6(target) == self.vip.ip() => {
                    if !message.checksum_valid {
                        self.violations.push(format!("[{}] bad ICMPv6 checksum: {}", kind::TCP, summarize(frame)));
                        return;
                    }
                    if ip.hop_limit != 255 {
                        self.violations.push(format!("[{}] NA with hop limit {} (RFC 4861 7.1.2 wants 255)", kind::TCP, ip.hop_limit));
                    }
                    match lladdr {
                        Some(mac) => self.vip_mac = Some(mac),
                        None => {
                            // RFC 4861 4.4: a reply to a multicast solicitation MUST carry it.
                            self.violations.push(format!("[{}] NA for the VIP without a target link-layer address", kind::TCP));
                            self.vip_mac = Some(source_mac);
                        }
                    }
                }
                _ => self.stray.push(summarize(frame)),
            },
            Transport::Tcp(segment) => {
                let source = SocketAddr::new(ip.source, segment.src_port);
                let destination = SocketAddr::new(ip.destination, segment.dst_port);
                let Some(session) =
                    self.sessions.iter_mut().find(|s| s.tcp.local == destination && s.tcp.remote == source)
                else {
                    self.stray.push(summarize(frame));
                    return;
                };
                if !segment.checksum_valid {
                    self.violations.push(format!("[{}] bad TCP checksum: {}", kind::TCP, summarize(frame)));
                    return;
                }
                if Some(source_mac) != self.vip_mac {
                    self.violations.push(format!("[{}] segment from MAC {source_mac}, not the VIP's: {}", kind::TCP, summarize(frame)));
                }
                session.tcp.on_segment(now, segment);
                session.pump(now);
            }
            _ => self.stray.push(summarize(frame)),
        }
    }

    /// Timers, applications and transmissions.
    pub fn poll(&mut self, now: u64, tx: &mut Vec<Vec<u8>>) {
        let Some(vip_mac) = self.vip_mac else {
            let due = self.resolution_sent_at.is_none_or(|at| now >= at + 1_000 * MS);
            if !self.sessions.is_empty() && due {
                self.resolution_sent_at = Some(now);
                self.resolutions_sent += 1;
                tx.push(self.resolution_frame());
            }
            return;
        };
        let mut segments = Vec::new();
        for session in &mut self.sessions {
            session.tcp.poll(now);
            session.pump(now);
            session.tcp.output(now, &mut segments);
            for segment in segments.drain(..) {
                tx.push(tcp_frame(self.mac, vip_mac, session.tcp.local, session.tcp.remote, &segment));
            }
        }
    }

    fn resolution_frame(&self) -> Vec<u8> {
        match (self.ip, self.vip.ip()) {
            (IpAddr::V4(ours), IpAddr::V4(vip)) => arp_frame(
                ArpOperation::Request,
                (self.mac, ours),
                (EthernetAddress::default(), vip),
                EthernetAddress::BROADCAST,
            ),
            (IpAddr::V6(ours), IpAddr::V6(vip)) => {
                let (group, group_mac) = solicited_node(vip);
                ndp_frame(false, (self.mac, group_mac), ours, group, vip)
            }
            _ => panic!("client and VIP of different families"),
        }
    }

    pub fn describe(&self) -> String {
        let mut text = format!("client host {} vip_mac={:?} resolutions_sent={}", self.ip, self.vip_mac, self.resolutions_sent);
        for session in &self.sessions {
            text += &format!("\n  {}", session.describe());
        }
        text
    }

    /// Every problem any connection or the host itself saw.
    pub fn all_violations(&self) -> Vec<String> {
        let mut all = self.violations.clone();
        for session in &self.sessions {
            all.extend(session.tcp.violations.iter().map(|v| labelled("client tcp", v)));
        }
        all
    }

    pub fn all_remarks(&self) -> Vec<String> {
        let mut all = self.remarks.clone();
        for session in &self.sessions {
            all.extend(session.tcp.remarks.iter().map(|v| labelled("client tcp", v)));
        }
        all
    }
}

/// What the backend expects of one client connection and what it answers.
#[derive(Clone)]
pub struct BackendExpectation {
    pub request: Vec<u8>,
    pub response: Vec<u8>,
    /// A request offset whose byte may arrive with its lowest bit flipped (the harness corrupted
    /// the ciphertext there; cut-through mode releases unverified plaintext by design).
    pub tolerate_flip_at: Option<usize>,
    /// Start the response at once instead of after the whole request (a full-duplex stream).
    pub respond_at_once: bool,
    /// Close (FIN) as soon as the response is written, before the client closes (an HTTP/1.0
    /// server, a server ending a keep-alive connection).
    pub close_first: bool,
}

/// A backend connection.
pub struct BackendSession {
    pub tcp: Tcp,
    pub server: SocketAddr,
    our_mac: EthernetAddress,
    /// The source MAC of the SYN: where this backend sends its segments.
    pub peer_mac: EthernetAddress,
    expectation: BackendExpectation,
    pub request: Vec<u8>,
    response_written: usize,
    pub mismatch: Option<String>,
}

impl BackendSession {
    fn pump(&mut self) {
        let incoming = self.tcp.readable().to_vec();
        self.tcp.consume(incoming.len());
        if !incoming.is_empty() {
            let at = self.request.len();
            check_stream(
                &mut self.mismatch,
                "request",
                &self.expectation.request,
                at,
                &incoming,
                self.expectation.tolerate_flip_at,
            );
            self.request.extend_from_slice(&incoming);
        }
        let complete = self.request.len() >= self.expectation.request.len();
        if (complete || self.expectation.respond_at_once) && self.tcp.state != super::tcp::State::Reset {
            while self.response_written < self.expectation.response.len() && self.tcp.backlog() < SEND_BUFFER {
                let end = self.expectation.response.len().min(self.response_written + WRITE_CHUNK);
                self.tcp.write(&self.expectation.response[self.response_written..end]);
                self.response_written = end;
            }
        }
        let answered = self.response_written == self.expectation.response.len();
        let closes_first = self.expectation.close_first && complete && answered;
        if (closes_first || self.tcp.fin_received() && (answered || !complete)) && !self.tcp.fin_queued() {
            self.tcp.close();
        }
    }

    pub fn is_finished(&self) -> bool {
        self.tcp.is_finished()
    }

    pub fn describe(&self) -> String {
        format!(
            "backend {} <- {}: request {}/{} received, response {}/{} written, mismatch={:?}\n    tcp {}",
            self.server,
            self.tcp.remote,
            self.request.len(),
            self.expectation.request.len(),
            self.response_written,
            self.expectation.response.len(),
            self.mismatch,
            self.tcp.describe()
        )
    }
}

/// The backend servers: several addresses (and MACs) on the inside port, one listening port.
pub struct BackendHost {
    pub servers: Vec<(SocketAddr, EthernetAddress)>,
    pub sessions: Vec<BackendSession>,
    expectations: HashMap<SocketAddr, BackendExpectation>,
    rng: Rng,
    pub tcp_config: TcpConfig,
    pub violations: Vec<String>,
    pub remarks: Vec<String>,
    pub stray: Vec<String>,
    pub resolutions_answered: u32,
    /// Resets sent for segments of unknown connections, as Linux answers them.
    pub resets_for_unknown: Vec<String>,
    pending: Vec<Vec<u8>>,
    /// Passthrough: the replayed SYN carries the client's MSS as it is (no records to fit).
    pub plain_syn: bool,
    /// Servers whose port is closed: a SYN gets RST|ACK, as from Linux.
    pub refusing: Vec<SocketAddr>,
    /// SYNs the refusing servers answered so.
    pub refused: u32,
}

impl BackendHost {
    pub fn new(servers: Vec<(SocketAddr, EthernetAddress)>, seed: u64) -> BackendHost {
        BackendHost {
            tcp_config: TcpConfig::linux(servers[0].0.ip()),
            servers,
            sessions: Vec::new(),
            expectations: HashMap::new(),
            rng: Rng::new(seed ^ 0xbac_e4d),
            violations: Vec::new(),
            remarks: Vec::new(),
            stray: Vec::new(),
            resolutions_answered: 0,
            resets_for_unknown: Vec::new(),
            pending: Vec::new(),
            plain_syn: false,
            refusing: Vec::new(),
            refused: 0,
        }
    }

    /// Tells the backend what the connection from `client` will carry.
    pub fn expect(&mut self, client: SocketAddr, expectation: BackendExpectation) {
        self.expectations.insert(client, expectation);
    }

    pub fn session_for(&self, client: SocketAddr) -> Option<&BackendSession> {
        self.sessions.iter().find(|s| s.tcp.remote == client)
    }

    fn mac_of(&self, ip: IpAddr) -> Option<EthernetAddress> {
        self.servers.iter().find(|(address, _)| address.ip() == ip).map(|(_, mac)| *mac)
    }

    /// A frame from the wire (the engine's inside port).
    pub fn receive(&mut self, now: u64, frame: &[u8]) {
        let parsed = match parse_frame(LinkType::Ethernet, frame) {
            Ok(parsed) => parsed,
            Err(error) => {
                self.violations.push(format!("[{}] unparsable frame to the backends ({error}): {frame:02x?}", kind::TCP));
                return;
            }
        };
        if frame.len() > MAX_FRAME {
            self.violations.push(format!("[{}] frame of {} bytes exceeds the 1500-byte MTU: {}", kind::MTU, frame.len(), summarize(frame)));
        }
        let (source_mac, destination_mac) = macs(&parsed.link);
        if !destination_mac.is_multicast() && !self.servers.iter().any(|(_, mac)| *mac == destination_mac) {
            self.stray.push(format!("not for a backend MAC: {}", summarize(frame)));
            return;
        }
        let (ip, transport) = match &parsed.network {
            NetworkPayload::Arp(arp) => {
                let target = IpAddr::V4(arp.target_protocol_addr);
                match (arp.operation, self.mac_of(target)) {
                    (ArpOperation::Request, Some(mac)) => {
                        self.resolutions_answered += 1;
                        self.pending.push(arp_frame(
                            ArpOperation::Reply,
                            (mac, arp.target_protocol_addr),
                            (arp.sender_hardware_addr, arp.sender_protocol_addr),
                            arp.sender_hardware_addr,
                        ));
                    }
                    _ => self.stray.push(summarize(frame)),
                }
                return;
            }
            NetworkPayload::Ip { ip, transport } => (ip, transport),
            NetworkPayload::Other { .. } => {
                self.stray.push(summarize(frame));
                return;
            }
        };
        if ip.header_checksum_valid == Some(false) {
            self.violations.push(format!("[{}] bad IPv4 header checksum: {}", kind::TCP, summarize(frame)));
            return;
        }
        match transport {
            Transport::Icmpv6(message) => match ndp_fields(message.message) {
                Some((ICMPV6_NEIGHBOR_SOLICITATION, target, lladdr)) => {
                    let Some(mac) = self.mac_of(IpAddr::V6(target)) else {
                        self.stray.push(summarize(frame));
                        return;
                    };
                    if !message.checksum_valid {
                        self.violations.push(format!("[{}] bad ICMPv6 checksum: {}", kind::TCP, summarize(frame)));
                        return;
                    }
                    if ip.hop_limit != 255 {
                        self.violations.push(format!("[{}] NS with hop limit {} (RFC 4861 7.1.1 wants 255)", kind::TCP, ip.hop_limit));
                    }
                    let IpAddr::V6(asker) = ip.source else { return };
                    // RFC 4861 7.2.4: reply to the solicitation's source, or to all nodes if
                    // that is unspecified (duplicate address detection).
                    let (destination, destination_mac) = if asker.is_unspecified() {
                        (Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), EthernetAddress([0x33, 0x33, 0, 0, 0, 1]))
                    } else {
                        (asker, lladdr.unwrap_or(source_mac))
                    };
                    self.resolutions_answered += 1;
                    self.pending.push(ndp_frame(true, (mac, destination_mac), target, destination, target));
                }
                _ => self.stray.push(summarize(frame)),
            },
            Transport::Tcp(segment) => self.receive_segment(now, frame, ip.source, ip.destination, source_mac, segment),
            _ => self.stray.push(summarize(frame)),
        }
    }

    fn receive_segment(
        &mut self,
        now: u64,
        frame: &[u8],
        source_ip: IpAddr,
        destination_ip: IpAddr,
        source_mac: EthernetAddress,
        segment: &TcpSegment<'_>,
    ) {
        let source = SocketAddr::new(source_ip, segment.src_port);
        let destination = SocketAddr::new(destination_ip, segment.dst_port);
        let Some(&(server, our_mac)) = self.servers.iter().find(|(address, _)| *address == destination) else {
            self.stray.push(summarize(frame));
            return;
        };
        if !segment.checksum_valid {
            self.violations.push(format!("[{}] bad TCP checksum: {}", kind::TCP, summarize(frame)));
            return;
        }
        if let Some(session) =
            self.sessions.iter_mut().find(|s| s.server == server && s.tcp.remote == source && !s.tcp.is_finished())
        {
            session.tcp.on_segment(now, segment);
            session.pump();
            return;
        }
        let is_syn = segment.flags.contains(TcpFlags::SYN) && !segment.flags.contains(TcpFlags::ACK);
        if is_syn && self.refusing.contains(&server) {
            let reset = Outgoing {
                seq: SeqNumber(0),
                ack: segment.seq_number + 1,
                flags: TcpFlags::RST | TcpFlags::ACK,
                window: 0,
                options: Default::default(),
                payload: Vec::new(),
            };
            self.refused += 1;
            self.pending.push(tcp_frame(our_mac, source_mac, destination, source, &reset));
            return;
        }
        match (is_syn, self.expectations.get(&source)) {
            (true, Some(expectation)) => {
                let expectation = expectation.clone();
                self.check_syn(source, segment);
                let iss = self.tcp_config.fixed_iss.unwrap_or(self.rng.next() as u32);
                let ts_offset = self.rng.next() as u32;
                let tcp = Tcp::accept(self.tcp_config, server, source, iss, ts_offset, segment);
                self.sessions.push(BackendSession {
                    tcp,
                    server,
                    our_mac,
                    peer_mac: source_mac,
                    expectation,
                    request: Vec::new(),
                    response_written: 0,
                    mismatch: None,
                });
            }
            (true, None) => {
                self.violations.push(format!("[{}] SYN from {source}, which no client opened: {}", kind::TCP, summarize(frame)));
            }
            (false, _) => {
                self.stray.push(summarize(frame));
                if !segment.flags.contains(TcpFlags::RST) {
                    // RFC 9293 3.10.7.1, as Linux does for a segment of no connection.
                    let (seq, ack, flags) = if segment.flags.contains(TcpFlags::ACK) {
                        (segment.ack_number, segment.seq_number, TcpFlags::RST)
                    } else {
                        let len = segment.payload.len() + segment.flags.sequence_len();
                        (segment.ack_number, segment.seq_number + len, TcpFlags::RST | TcpFlags::ACK)
                    };
                    let reset = Outgoing {
                        seq,
                        ack,
                        flags,
                        window: 0,
                        options: Default::default(),
                        payload: Vec::new(),
                    };
                    self.resets_for_unknown.push(summarize(frame));
                    self.pending.push(tcp_frame(our_mac, source_mac, destination, source, &reset));
                }
            }
        }
    }

    /// The engine's replayed SYN: transparent, options kept, MSS reduced for the record overhead.
    fn check_syn(&mut self, source: SocketAddr, syn: &TcpSegment<'_>) {
        let options = &syn.options;
        let client_mss = TcpConfig::linux(source.ip()).mss;
        match options.max_segment_size {
            None => self.violations.push(format!("[{}] replayed SYN from {source} has no MSS", kind::TCP)),
            Some(mss) if self.plain_syn => {
                if mss != client_mss {
                    self.violations.push(format!("[{}] passthrough SYN from {source} has MSS {mss}, not the client's {client_mss}", kind::TCP));
                }
            }
            // The smallest per-record overhead is 21 bytes (5 header + 16 tag, TLS 1.2
            // ChaCha20); anything above the client's MSS - 21 cannot fit a sealed segment in
            // one client segment.
            Some(mss) if mss > TcpConfig::linux(source.ip()).mss - 21 => {
                self.violations.push(format!("[{}] replayed SYN from {source} has MSS {mss}, not reduced by the record overhead", kind::TCP))
            }
            Some(_) => {}
        }
        if options.window_scale.is_none() || options.timestamp.is_none() {
            self.violations.push(format!(
                "[{}] replayed SYN from {source} lost window scale or timestamps the client offered: ws {:?} ts {:?}",
                kind::TCP, options.window_scale, options.timestamp
            ));
        }
        if !options.sack_permitted {
            // Documented in session/mod.rs: no SACK translation yet, so SACK is not offered.
            self.remarks.push(format!("replayed SYN from {source} does not offer SACK-permitted though the client did"));
        }
    }

    pub fn poll(&mut self, now: u64, tx: &mut Vec<Vec<u8>>) {
        tx.append(&mut self.pending);
        let mut segments = Vec::new();
        for session in &mut self.sessions {
            session.tcp.poll(now);
            session.pump();
            session.tcp.output(now, &mut segments);
            for segment in segments.drain(..) {
                tx.push(tcp_frame(session.our_mac, session.peer_mac, session.server, session.tcp.remote, &segment));
            }
        }
    }

    pub fn describe(&self) -> String {
        let mut text = format!("backends: {} resolutions answered", self.resolutions_answered);
        for session in &self.sessions {
            text += &format!("\n  {}", session.describe());
        }
        text
    }

    pub fn all_violations(&self) -> Vec<String> {
        let mut all = self.violations.clone();
        for session in &self.sessions {
            all.extend(session.tcp.violations.iter().map(|v| labelled("backend tcp", v)));
        }
        all
    }

    pub fn all_remarks(&self) -> Vec<String> {
        let mut all = self.remarks.clone();
        for session in &self.sessions {
            all.extend(session.tcp.remarks.iter().map(|v| labelled("backend tcp", v)));
        }
        all
    }
}

/// Names the connection after the `[kind]` tag, which stays first.
fn labelled(who: &str, line: &str) -> String {
    match line.split_once("] ") {
        Some((tag, rest)) if line.starts_with('[') => format!("{tag}] {who}: {rest}"),
        _ => format!("{who}: {line}"),
    }
}

/// Compares bytes arriving at `at` with the expected stream; keeps the first difference.
fn check_stream(
    mismatch: &mut Option<String>,
    what: &str,
    expected: &[u8],
    at: usize,
    arrived: &[u8],
    tolerate_flip_at: Option<usize>,
) {
    if mismatch.is_some() {
        return;
    }
    for (i, &byte) in arrived.iter().enumerate() {
        let offset = at + i;
        let Some(&wanted) = expected.get(offset) else {
            *mismatch = Some(format!(
                "{what}: {} bytes arrived beyond the {} expected; first extra bytes {:02x?}",
                at + arrived.len() - expected.len(),
                expected.len(),
                &arrived[i..arrived.len().min(i + 16)]
            ));
            return;
        };
        if byte != wanted && !(tolerate_flip_at == Some(offset) && byte == wanted ^ 0x01) {
            *mismatch = Some(format!(
                "{what}: byte {offset} is {byte:#04x}, expected {wanted:#04x}; arrived {:02x?}, expected {:02x?}",
                &arrived[i..arrived.len().min(i + 16)],
                &expected[offset..expected.len().min(offset + 16)]
            ));
            return;
        }
    }
}
