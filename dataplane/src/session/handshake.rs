//! Where rustls runs: inline in the poll loop, or on a pool of worker threads.
//!
//! A full handshake holds whoever computes it for 0.1 to 0.5 ms (docs/bench-handshake.md):
//! inline, every other session's packets wait that long. With a [`HandshakePool`] the poll
//! loop only frames the client's handshake records and ships them, with the session's
//! `ServerConnection`, to a worker; the worker feeds rustls, collects its flight and, when the
//! handshake is over, takes the keys out; the loop picks the results up in
//! [`super::Engine::poll`]. Inline mode stays for tests and replays: it is deterministic.
//!
//! Both modes run the same [`run`]: rustls is fed one whole record at a time and stops as soon
//! as it is no longer handshaking, so the client's first application record (which in TLS 1.3
//! looks like its Finished) stays for the record engine.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use rustls::ServerConnection;

use super::events::TlsFacts;
use super::handover::{session_keys, SecretLog, SessionKeys};
use crate::io::doorbell::Doorbell;

/// Work for rustls: the session's connection and the complete records to feed it.
pub(crate) struct Job {
    pub session: u64,
    pub tls: Box<ServerConnection>,
    pub input: Vec<u8>,
    pub client_random: Option<[u8; 32]>,
    pub secrets: Arc<SecretLog>,
}

/// What rustls made of a [`Job`].
pub(crate) struct JobResult {
    pub session: u64,
    /// The connection back, while the handshake goes on.
    pub tls: Option<Box<ServerConnection>>,
    /// Input bytes rustls took (the rest, if any, is the client's first application data).
    pub consumed: usize,
    /// Bytes for the client (the server's flight, or an alert).
    pub output: Vec<u8>,
    pub outcome: Outcome,
    /// What the handshake negotiated, with [`Outcome::Keys`].
    pub facts: Option<TlsFacts>,
}

pub(crate) enum Outcome {
    /// More client records are needed.
    Handshaking,
    /// Done: the keys, taken out of rustls.
    Keys(Box<SessionKeys>),
    /// rustls refused the handshake (its alert, if any, is in `output`), or the hand-over failed.
    Failed,
}

/// Feeds rustls the whole records in `job.input`, one at a time.
/// Whether `header` (five bytes at least) could start a TLS record: a content type of 20-24
/// and version 3.x. Plain HTTP or an SSLv2 hello cannot.
pub(crate) fn is_tls_record_header(header: &[u8]) -> bool {
    (20..=24).contains(&header[0]) && header[1] == 3
}

pub(crate) fn run(mut job: Job) -> JobResult {
    let mut output = Vec::new();
    let mut consumed = 0;
    let tls = &mut job.tls;
    let mut failed = false;
    while tls.is_handshaking() && job.input.len() - consumed >= 5 {
        let rest = &job.input[consumed..];
        // A header no TLS record has: all of it at once, for rustls to refuse.
        let len = if is_tls_record_header(rest) { 5 + u16::from_be_bytes([rest[3], rest[4]]) as usize } else { rest.len() };
        if rest.len() < len {
            break;
        }
        let mut reader = &rest[..len];
        while !reader.is_empty() {
            if tls.read_tls(&mut reader).is_err() {
                failed = true;
                break;
            }
        }
        consumed += len;
        let processed = tls.process_new_packets();
        while tls.wants_write() {
            if tls.write_tls(&mut output).is_err() {
                failed = true;
                break;
            }
        }
        if failed || processed.is_err() {
            return JobResult { session: job.session, tls: None, consumed, output, outcome: Outcome::Failed, facts: None };
        }
    }
    if tls.is_handshaking() {
        return JobResult { session: job.session, tls: Some(job.tls), consumed, output, outcome: Outcome::Handshaking, facts: None };
    }
    // Everything rustls still has queued (TLS 1.3 tickets) goes before the keys come out, so
    // the extracted sequence numbers are the next ones.
    while tls.wants_write() {
        if tls.write_tls(&mut output).is_err() {
            return JobResult { session: job.session, tls: None, consumed, output, outcome: Outcome::Failed, facts: None };
        }
    }
    let facts = tls_facts(&job.tls);
    let (outcome, facts) = match hand_over(job.tls, job.client_random, &job.secrets) {
        Some(keys) => (Outcome::Keys(Box::new(keys)), Some(facts)),
        None => (Outcome::Failed, None),
    };
    JobResult { session: job.session, tls: None, consumed, output, outcome, facts }
}

/// What the finished handshake of `tls` negotiated, for the control plane.
fn tls_facts(tls: &ServerConnection) -> TlsFacts {
    TlsFacts {
        server_name: tls.server_name().map(str::to_owned),
        alpn: tls.alpn_protocol().map(|alpn| String::from_utf8_lossy(alpn).into_owned()),
        version: match tls.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "unknown",
        },
        suite: tls.negotiated_cipher_suite().and_then(|suite| suite.suite().as_str()).unwrap_or("unknown"),
    }
}

fn hand_over(tls: Box<ServerConnection>, client_random: Option<[u8; 32]>, secrets: &SecretLog) -> Option<SessionKeys> {
    let suite = tls.negotiated_cipher_suite()?;
    let extracted = tls.dangerous_extract_secrets().ok()?;
    let traffic_secrets = client_random.and_then(|random| secrets.take(&random));
    session_keys(suite, extracted, traffic_secrets).ok()
}

/// Worker threads that run handshakes off the poll loop.
pub struct HandshakePool {
    jobs: Option<Sender<Job>>,
    results: Receiver<JobResult>,
    workers: Vec<JoinHandle<()>>,
}

impl HandshakePool {
    /// Starts `threads` workers (at least one); each rings `doorbell`, if given, after it
    /// queues a result, so that the poll loop sleeps instead of polling for results.
    pub fn start(threads: usize, doorbell: Option<Arc<Doorbell>>) -> std::io::Result<HandshakePool> {
        let (jobs, job_queue) = crossbeam_channel::unbounded::<Job>();
        let (result_sender, results) = crossbeam_channel::unbounded::<JobResult>();
        let mut workers = Vec::new();
        for index in 0..threads.max(1) {
            let job_queue = job_queue.clone();
            let result_sender = result_sender.clone();
            let doorbell = doorbell.clone();
            workers.push(
                std::thread::Builder::new().name(format!("cutls-handshake-{index}")).spawn(move || {
                    for job in job_queue.iter() {
                        if result_sender.send(run(job)).is_err() {
                            break;
                        }
                        if let Some(doorbell) = &doorbell {
                            doorbell.ring();
                        }
                    }
                })?,
            );
        }
        Ok(HandshakePool { jobs: Some(jobs), results, workers })
    }

    pub(crate) fn submit(&self, job: Job) -> Result<(), Job> {
        match &self.jobs {
            Some(jobs) => jobs.send(job).map_err(|error| error.into_inner()),
            None => Err(job),
        }
    }

    pub(crate) fn results(&self) -> impl Iterator<Item = JobResult> + '_ {
        self.results.try_iter()
    }

    /// Whether finished handshakes wait to be collected.
    pub(crate) fn has_results(&self) -> bool {
        !self.results.is_empty()
    }
}

impl Drop for HandshakePool {
    fn drop(&mut self) {
        // Closing the job queue ends the workers' loops.
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}
