//! How a new session's backend is chosen among a pool's backends in rotation: round robin, the
//! fewest live sessions relative to the backend's weight, or the least load (live sessions
//! times a peak-EWMA of the backend's response time, per weight, of two picked at random). Each poll loop counts its own
//! sessions (the loops share the clients by hash, so each sees about the same mix), and a
//! backend's `max_sessions` is shared out among the loops as the box's limits are.

use std::collections::HashMap;
use std::net::SocketAddr;

/// A pool's choice of backend (`balance` in the configuration, where least-load is the
/// default; the engine's default, for a listener it has no balancing for, is round robin).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    /// Each backend in turn.
    #[default]
    RoundRobin,
    /// The backend with the fewest live sessions per unit of weight; ties in turn. A slow
    /// backend keeps its sessions longer and so gets fewer new ones.
    LeastSessions,
    /// Of two backends picked at random, the one whose (live sessions + 1) x (response time +
    /// 1 ms) per unit of weight is lower. The response time is a peak-EWMA ([`ResponseTime`])
    /// of the time from a request's last byte forwarded to the first byte of the answer.
    LeastLoad,
}

/// A peak-EWMA of a backend's response times (as Finagle's and Linkerd's balancers keep): a
/// sample above the average takes its place at once, one below pulls it down with a decay of
/// [`DECAY_NS`], so a backend that turns slow is avoided at once and one that recovers is
/// trusted again over seconds. Without samples it decays toward zero with the same time
/// constant ([`ResponseTime::average_at`]): a backend avoided for being slow gets new sessions
/// again after a while, and so a chance to show it recovered.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ResponseTime {
    average_ns: f64,
    updated_ns: u64,
}

/// The time constant of [`ResponseTime`]'s decay.
pub const DECAY_NS: u64 = 5_000_000_000;

/// The response time a failed connection counts as (refused, or no answer to the SYNs): a
/// backend that fails fast would otherwise look the lightest of all to [`Balance::LeastLoad`]
/// and draw the sessions. It fades like any sample, so the backend is tried again seconds
/// later (health checks take a dead one out of rotation for good).
pub const CONNECT_FAILURE_NS: u64 = 1_000_000_000;

impl ResponseTime {
    pub fn sample(&mut self, now_ns: u64, sample_ns: u64) {
        let sample = sample_ns as f64;
        if sample > self.average_ns {
            self.average_ns = sample;
        } else {
            let elapsed = now_ns.saturating_sub(self.updated_ns) as f64;
            let keep = (-elapsed / DECAY_NS as f64).exp();
            self.average_ns = self.average_ns * keep + sample * (1.0 - keep);
        }
        self.updated_ns = now_ns;
    }

    /// The average as the last sample left it.
    pub fn average_ns(&self) -> f64 {
        self.average_ns
    }

    /// The average at `now_ns`, decayed toward zero since the last sample.
    pub fn average_at(&self, now_ns: u64) -> f64 {
        let elapsed = now_ns.saturating_sub(self.updated_ns) as f64;
        self.average_ns * (-elapsed / DECAY_NS as f64).exp()
    }
}

/// What a session learnt of its backend's speed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResponseSample {
    /// The first byte of an answer came this long after the request's last byte went.
    Answer(u64),
    /// The backend refused the connection, or never answered its SYNs.
    ConnectFailed,
}

/// The upper bounds of [`ResponseHistogram`]'s buckets: 1 ms to 10 s.
pub const RESPONSE_BUCKETS_NS: [u64; 13] = [
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
    200_000_000,
    500_000_000,
    1_000_000_000,
    2_000_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A backend's response times (the samples least-load takes), counted by bucket of
/// [`RESPONSE_BUCKETS_NS`] and one past the last, with their sum: what the metrics' histogram
/// is made of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseHistogram {
    pub buckets: [u64; RESPONSE_BUCKETS_NS.len() + 1],
    pub sum_ns: u64,
}

impl ResponseHistogram {
    pub fn record(&mut self, sample_ns: u64) {
        let bucket = RESPONSE_BUCKETS_NS.iter().position(|&bound| sample_ns <= bound).unwrap_or(RESPONSE_BUCKETS_NS.len());
        self.buckets[bucket] += 1;
        self.sum_ns = self.sum_ns.saturating_add(sample_ns);
    }

    pub fn add(&mut self, other: &ResponseHistogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// One backend's share and limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendOptions {
    /// Relative share of new sessions under [`Balance::LeastSessions`] (1 to 1000).
    pub weight: u32,
    /// Live sessions at most (the box's; each loop takes its share); a backend at its limit is
    /// skipped, and a session none can take is refused.
    pub max_sessions: Option<usize>,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions { weight: 1, max_sessions: None }
    }
}

/// What the engine needs to choose backends.
#[derive(Clone, Debug, Default)]
pub struct Balancing {
    /// Per listener (engine index): how its pool chooses, and its passthrough pool's.
    pub listeners: Vec<Balance>,
    pub passthrough: Vec<Balance>,
    /// Per backend address; absent: [`BackendOptions::default`].
    pub backends: HashMap<SocketAddr, BackendOptions>,
}

impl Balancing {
    pub(crate) fn balance(&self, listener: usize, passthrough: bool) -> Balance {
        let list = if passthrough { &self.passthrough } else { &self.listeners };
        list.get(listener).copied().unwrap_or_default()
    }

    pub(crate) fn options(&self, backend: &SocketAddr) -> BackendOptions {
        self.backends.get(backend).copied().unwrap_or_default()
    }
}

/// The next draw of a xorshift generator (least-load's random choices: not a secret).
pub(crate) fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Bytes in flight to a backend that weigh as much as one more session for least-load: a
/// backend still reading a large upload is busier than its session count says.
pub const IN_FLIGHT_PER_SESSION: f64 = 65_536.0;

/// Of `candidates` (in turn order; `None` if empty), the one `balance` picks, given each one's
/// live sessions, options, response time and bytes in flight to it; `random` draws for
/// least-load.
pub(crate) fn pick(
    balance: Balance,
    candidates: &[SocketAddr],
    sessions: impl Fn(&SocketAddr) -> u32,
    options: impl Fn(&SocketAddr) -> BackendOptions,
    response_ns: impl Fn(&SocketAddr) -> f64,
    in_flight: impl Fn(&SocketAddr) -> u64,
    random: &mut impl FnMut() -> u64,
) -> Option<SocketAddr> {
    match balance {
        Balance::LeastLoad => {
            let load = |backend: &SocketAddr| {
                let busy = f64::from(sessions(backend)) + 1.0 + in_flight(backend) as f64 / IN_FLIGHT_PER_SESSION;
                busy * (response_ns(backend) + 1e6) / f64::from(options(backend).weight.max(1))
            };
            match candidates.len() {
                0 => None,
                1 => candidates.first().copied(),
                count => {
                    // Power of two choices: two distinct backends at random.
                    let first = (random() % count as u64) as usize;
                    let second = (first + 1 + (random() % (count as u64 - 1)) as usize) % count;
                    let (a, b) = (candidates[first], candidates[second]);
                    Some(if load(&b) < load(&a) { b } else { a })
                }
            }
        }
        Balance::RoundRobin => candidates.first().copied(),
        // (sessions + 1) / weight, compared without division; the first in turn wins ties.
        Balance::LeastSessions => candidates.iter().copied().min_by(|a, b| {
            let load = |backend: &SocketAddr| (u64::from(sessions(backend)) + 1, u64::from(options(backend).weight.max(1)));
            let ((sessions_a, weight_a), (sessions_b, weight_b)) = (load(a), load(b));
            (sessions_a * weight_b).cmp(&(sessions_b * weight_a))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses() -> [SocketAddr; 3] {
        ["10.0.0.1:80".parse().unwrap(), "10.0.0.2:80".parse().unwrap(), "10.0.0.3:80".parse().unwrap()]
    }

    /// Runs `rounds` choices, each new session staying (counted) on its backend, and returns
    /// how many each got.
    fn share(balance: Balance, weights: [u32; 3], rounds: usize) -> [u32; 3] {
        let backends = addresses();
        let mut sessions = HashMap::new();
        for round in 0..rounds {
            // The turn order rotates as the engine's counter does.
            let turn: Vec<SocketAddr> = (0..3).map(|i| backends[(round + i) % 3]).collect();
            let options = |b: &SocketAddr| BackendOptions { weight: weights[backends.iter().position(|x| x == b).unwrap()], max_sessions: None };
            let chosen = pick(balance, &turn, |b| *sessions.get(b).unwrap_or(&0), options, |_| 0.0, |_| 0, &mut || 0).unwrap();
            *sessions.entry(chosen).or_insert(0) += 1;
        }
        backends.map(|b| *sessions.get(&b).unwrap_or(&0))
    }

    #[test]
    fn response_histograms_count_by_bucket() {
        let mut histogram = ResponseHistogram::default();
        for sample in [500_000, 1_000_000, 1_000_001, 3_000_000_000, 60_000_000_000] {
            histogram.record(sample);
        }
        assert_eq!((histogram.buckets[0], histogram.buckets[1], histogram.buckets[11], histogram.buckets[13]), (2, 1, 1, 1));
        assert_eq!((histogram.count(), histogram.sum_ns), (5, 63_002_500_001));
        let mut total = histogram;
        total.add(&histogram);
        assert_eq!((total.count(), total.buckets[0]), (10, 4));
    }

    #[test]
    fn round_robin_takes_each_in_turn() {
        assert_eq!(share(Balance::RoundRobin, [1, 1, 1], 9), [3, 3, 3]);
        assert_eq!(share(Balance::RoundRobin, [5, 1, 1], 9), [3, 3, 3], "weights do not change round robin");
    }

    #[test]
    fn least_sessions_follows_the_weights() {
        assert_eq!(share(Balance::LeastSessions, [1, 1, 1], 9), [3, 3, 3]);
        assert_eq!(share(Balance::LeastSessions, [3, 1, 1], 50), [30, 10, 10]);
        assert_eq!(share(Balance::LeastSessions, [2, 2, 1], 50), [20, 20, 10]);
    }

    #[test]
    fn least_sessions_avoids_a_backend_whose_sessions_last() {
        // The first backend holds 10 sessions that have not ended (a slow one): the next 10 go
        // to the other two.
        let backends = addresses();
        let mut sessions = HashMap::from([(backends[0], 10u32)]);
        for round in 0..10 {
            let turn: Vec<SocketAddr> = (0..3).map(|i| backends[(round + i) % 3]).collect();
            let chosen =
                pick(Balance::LeastSessions, &turn, |b| *sessions.get(b).unwrap_or(&0), |_| BackendOptions::default(), |_| 0.0, |_| 0, &mut || 0)
                    .unwrap();
            assert_ne!(chosen, backends[0]);
            *sessions.entry(chosen).or_insert(0) += 1;
        }
    }

    #[test]
    fn least_load_avoids_a_slow_backend_and_a_busy_one() {
        let backends = addresses();
        // The first answers in 200 ms, the others in 2 ms; all idle.
        let response = |b: &SocketAddr| if *b == backends[0] { 200e6 } else { 2e6 };
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move || xorshift(&mut state);
        let mut chosen = [0u32; 3];
        for _ in 0..300 {
            let backend = pick(Balance::LeastLoad, &backends, |_| 0, |_| BackendOptions::default(), response, |_| 0, &mut random).unwrap();
            chosen[backends.iter().position(|b| *b == backend).unwrap()] += 1;
        }
        assert_eq!(chosen[0], 0, "the slow one loses every pair it is in: {chosen:?}");
        assert!(chosen[1] > 100 && chosen[2] > 100, "{chosen:?}");
        // Equal response times: the busier loses.
        let busy = |b: &SocketAddr| if *b == backends[1] { 50 } else { 0 };
        for _ in 0..50 {
            let backend = pick(Balance::LeastLoad, &backends, busy, |_| BackendOptions::default(), |_| 2e6, |_| 0, &mut random).unwrap();
            assert_ne!(backend, backends[1]);
        }
        // Equal sessions and response times: the one still reading 1 MiB of uploads loses (it
        // weighs 16 sessions more); 32 KiB is half a session, against one session fewer.
        let reading = |b: &SocketAddr| if *b == backends[2] { 1 << 20 } else { 0 };
        for _ in 0..50 {
            let backend = pick(Balance::LeastLoad, &backends, |_| 4, |_| BackendOptions::default(), |_| 2e6, reading, &mut random).unwrap();
            assert_ne!(backend, backends[2]);
        }
        let sessions = |b: &SocketAddr| if *b == backends[0] { 5 } else { 4 };
        let little = |b: &SocketAddr| if *b == backends[1] { 32 << 10 } else { 0 };
        let pair = [backends[0], backends[1]];
        let backend = pick(Balance::LeastLoad, &pair, sessions, |_| BackendOptions::default(), |_| 2e6, little, &mut random).unwrap();
        assert_eq!(backend, backends[1], "4.5 sessions' worth against 5");
    }

    #[test]
    fn response_time_takes_peaks_at_once_and_decays() {
        let mut time = ResponseTime::default();
        time.sample(0, 2_000_000);
        assert_eq!(time.average_ns(), 2e6);
        time.sample(1_000_000_000, 300_000_000);
        assert_eq!(time.average_ns(), 300e6, "a peak at once");
        // Fast answers for a while pull it back toward 2 ms.
        for second in 2..30 {
            time.sample(second * 1_000_000_000, 2_000_000);
        }
        assert!(time.average_ns() < 5e6, "{}", time.average_ns());
        // One fast answer right after a peak moves it little.
        time.sample(31_000_000_000, 300_000_000);
        time.sample(31_010_000_000, 2_000_000);
        assert!(time.average_ns() > 290e6, "{}", time.average_ns());
        // Without samples it fades: after four time constants, under 2% of itself.
        assert!(time.average_at(31_010_000_000 + 4 * DECAY_NS) < 0.02 * time.average_ns());
    }
}
