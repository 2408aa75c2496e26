//! How a new session's backend is chosen among a pool's backends in rotation: round robin, or
//! the fewest live sessions relative to the backend's weight. Each poll loop counts its own
//! sessions (the loops share the clients by hash, so each sees about the same mix), and a
//! backend's `max_sessions` is shared out among the loops as the box's limits are.

use std::collections::HashMap;
use std::net::SocketAddr;

/// A pool's choice of backend (`balance` in the configuration).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    /// Each backend in turn.
    #[default]
    RoundRobin,
    /// The backend with the fewest live sessions per unit of weight; ties in turn. A slow
    /// backend keeps its sessions longer and so gets fewer new ones.
    LeastSessions,
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

/// Of `candidates` (in turn order, at least one), the one `balance` picks, given each one's
/// live sessions and options.
pub(crate) fn pick(
    balance: Balance,
    candidates: &[SocketAddr],
    sessions: impl Fn(&SocketAddr) -> u32,
    options: impl Fn(&SocketAddr) -> BackendOptions,
) -> Option<SocketAddr> {
    match balance {
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
            let chosen = pick(balance, &turn, |b| *sessions.get(b).unwrap_or(&0), options).unwrap();
            *sessions.entry(chosen).or_insert(0) += 1;
        }
        backends.map(|b| *sessions.get(&b).unwrap_or(&0))
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
            let chosen = pick(Balance::LeastSessions, &turn, |b| *sessions.get(b).unwrap_or(&0), |_| BackendOptions::default()).unwrap();
            assert_ne!(chosen, backends[0]);
            *sessions.entry(chosen).or_insert(0) += 1;
        }
    }
}
