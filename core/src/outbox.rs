//! Delivery bookkeeping for the outbox: what happens to a message after a failed attempt.

/// What a failed delivery attempt turns the message into.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AfterFailure {
    /// Try again after this many seconds.
    Retry { delay_seconds: f64 },
    /// Give up: permanent error or out of attempts.
    Dead,
    /// The code expires before the next attempt could be made: never send it.
    Expired,
}

/// Exponential backoff with jitter: `base · 2^(attempts-1)`, capped at `cap`, then scaled by
/// a factor in [0.5, 1.0) from `jitter` (uniform in [0, 1)), so dispatchers that failed
/// together do not retry together.
pub fn retry_delay(attempts: i64, base: f64, cap: f64, jitter: f64) -> f64 {
    let exp = (attempts.max(1) - 1).min(30) as i32;
    let raw = (base * 2f64.powi(exp)).min(cap);
    raw * (0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// Decides the fate of a message whose attempt number `attempts` just failed.
pub fn after_failure(
    attempts: i64,
    max_attempts: i64,
    retryable: bool,
    seconds_until_expiry: f64,
    delay_seconds: f64,
) -> AfterFailure {
    if seconds_until_expiry <= 0.0 {
        AfterFailure::Expired
    } else if !retryable || attempts >= max_attempts {
        AfterFailure::Dead
    } else if delay_seconds >= seconds_until_expiry {
        AfterFailure::Expired
    } else {
        AfterFailure::Retry { delay_seconds }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_until_the_cap_and_jitter_halves_at_most() {
        assert_eq!(retry_delay(1, 5.0, 300.0, 1.0), 5.0);
        assert_eq!(retry_delay(2, 5.0, 300.0, 1.0), 10.0);
        assert_eq!(retry_delay(4, 5.0, 300.0, 1.0), 40.0);
        assert_eq!(retry_delay(20, 5.0, 300.0, 1.0), 300.0);
        assert_eq!(retry_delay(1, 5.0, 300.0, 0.0), 2.5);
        assert_eq!(retry_delay(0, 5.0, 300.0, 0.5), 3.75);
        assert_eq!(retry_delay(i64::MAX, 5.0, 300.0, 1.0), 300.0);
    }

    #[test]
    fn fate_after_failure() {
        assert_eq!(
            after_failure(1, 5, true, 200.0, 5.0),
            AfterFailure::Retry { delay_seconds: 5.0 }
        );
        assert_eq!(after_failure(5, 5, true, 200.0, 5.0), AfterFailure::Dead);
        assert_eq!(after_failure(1, 5, false, 200.0, 5.0), AfterFailure::Dead);
        assert_eq!(after_failure(1, 5, true, 3.0, 5.0), AfterFailure::Expired);
        assert_eq!(after_failure(1, 5, false, -1.0, 5.0), AfterFailure::Expired);
    }
}
