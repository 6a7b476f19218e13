//! Exponential backoff without jitter, shared by every retry loop that doubles a wait.
//!
//! Pure state, no clock and no I/O: the caller asks for the next wait and adds it to its own
//! `Instant`, so the rules are unit-tested without timers. None of the loops that use it had
//! jitter, so it has none: the waits are exactly `min, 2·min, 4·min, …, max, max, …`.

use std::time::Duration;

/// A wait that doubles on every [`Backoff::next`] up to a cap, and drops back on
/// [`Backoff::reset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// A backoff whose first wait is `min` and whose waits never exceed `max` (`min` if it is the
    /// larger).
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let max = max.max(min);
        Backoff {
            min,
            max,
            current: min,
        }
    }

    /// The wait to use now; the one after it is twice as long, at most the cap.
    #[allow(clippy::should_implement_trait)] // never ends, so it is no `Iterator`
    pub fn next(&mut self) -> Duration {
        let wait = self.current;
        self.current = self.current.saturating_mul(2).min(self.max);
        wait
    }

    /// The wait [`Backoff::next`] will give next, without advancing.
    pub fn current(&self) -> Duration {
        self.current
    }

    /// Starts again from the shortest wait (after a success).
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_up_to_the_cap() {
        let mut b = Backoff::new(250 * MS, 10_000 * MS);
        let waits: Vec<u128> = (0..9).map(|_| b.next().as_millis()).collect();
        assert_eq!(
            waits,
            [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000]
        );
        assert_eq!(b.current(), 10_000 * MS);
    }

    #[test]
    fn current_does_not_advance_and_reset_starts_over() {
        let mut b = Backoff::new(500 * MS, 60_000 * MS);
        assert_eq!(b.current(), 500 * MS);
        assert_eq!(b.current(), 500 * MS);
        b.next();
        b.next();
        assert_eq!(b.current(), 2000 * MS);
        b.reset();
        assert_eq!(b.current(), 500 * MS);
        assert_eq!(b.next(), 500 * MS);
    }

    #[test]
    fn never_overflows_and_min_above_max_stays_at_min() {
        let mut huge = Backoff::new(Duration::MAX / 2 + MS, Duration::MAX);
        huge.next();
        assert_eq!(huge.next(), Duration::MAX);
        assert_eq!(huge.next(), Duration::MAX);
        let mut flat = Backoff::new(5 * MS, MS);
        assert_eq!((flat.next(), flat.next()), (5 * MS, 5 * MS));
    }

    #[test]
    fn zero_min_stays_zero() {
        let mut b = Backoff::new(Duration::ZERO, MS);
        assert_eq!((b.next(), b.next()), (Duration::ZERO, Duration::ZERO));
    }
}
