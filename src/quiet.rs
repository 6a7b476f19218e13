//! Rate-limited warnings: what a peer can make happen once per stream or request is logged once
//! per peer (or address) and condition per [`LOG_INTERVAL`], with the count of what was left
//! unsaid, so a flood costs a few lines and each line names who caused it.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// One line per key and condition per this interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Keys remembered at most; beyond, the oldest windows are forgotten (their next line comes
/// early, which costs a line, not memory).
pub const MAX_LOG_KEYS: usize = 1024;

/// Decides which occurrences of a repeated warning are logged.
#[derive(Debug)]
pub struct LogLimiter<K> {
    windows: HashMap<K, Window>,
    burst: u32,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    opened: Instant,
    said: u32,
    unsaid: u64,
}

impl<K: Hash + Eq + Clone> Default for LogLimiter<K> {
    fn default() -> Self {
        LogLimiter::with_burst(1)
    }
}

impl<K: Hash + Eq + Clone> LogLimiter<K> {
    /// A limiter that lets `burst` lines per key through in each interval before it stays quiet.
    pub fn with_burst(burst: u32) -> Self {
        LogLimiter {
            windows: HashMap::new(),
            burst: burst.max(1),
        }
    }

    /// An occurrence of `key` at `now`: `Some(n)` to log it now, `n` being how many earlier
    /// ones went unsaid; `None` to stay quiet.
    pub fn allow(&mut self, key: &K, now: Instant) -> Option<u64> {
        if let Some(window) = self.windows.get_mut(key) {
            if now.duration_since(window.opened) < LOG_INTERVAL {
                if window.said < self.burst {
                    window.said += 1;
                    return Some(0);
                }
                window.unsaid += 1;
                return None;
            }
            let unsaid = window.unsaid;
            *window = Window {
                opened: now,
                said: 1,
                unsaid: 0,
            };
            return Some(unsaid);
        }
        if self.windows.len() >= MAX_LOG_KEYS {
            self.windows
                .retain(|_, w| now.duration_since(w.opened) < LOG_INTERVAL);
            if self.windows.len() >= MAX_LOG_KEYS {
                self.windows.clear();
            }
        }
        self.windows.insert(
            key.clone(),
            Window {
                opened: now,
                said: 1,
                unsaid: 0,
            },
        );
        Some(0)
    }
}

/// ", and N more like it since the last line" for a count of unsaid occurrences.
pub fn and_more(unsaid: u64) -> String {
    if unsaid == 0 {
        String::new()
    } else {
        format!(" ({unsaid} more like it since the last such line)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_and_interval_with_the_count_of_the_rest() {
        let mut limiter = LogLimiter::default();
        let t0 = Instant::now();
        assert_eq!(limiter.allow(&"a", t0), Some(0));
        for i in 1..1000 {
            assert_eq!(limiter.allow(&"a", t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(
            limiter.allow(&"b", t0),
            Some(0),
            "another key has its own line"
        );
        assert_eq!(limiter.allow(&"a", t0 + LOG_INTERVAL), Some(999));
    }

    #[test]
    fn a_burst_goes_through_then_one_line_per_interval() {
        let mut limiter = LogLimiter::with_burst(3);
        let t0 = Instant::now();
        let said: Vec<_> = (0..5).map(|_| limiter.allow(&"a", t0)).collect();
        assert_eq!(said, [Some(0), Some(0), Some(0), None, None]);
        assert_eq!(limiter.allow(&"a", t0 + LOG_INTERVAL), Some(2));
    }

    #[test]
    fn memory_is_bounded_by_the_number_of_keys() {
        let mut limiter = LogLimiter::default();
        let now = Instant::now();
        for key in 0..10 * MAX_LOG_KEYS {
            limiter.allow(&key, now);
            assert!(limiter.windows.len() <= MAX_LOG_KEYS);
        }
    }
}
