//! Sliding-window rate-limit and cooldown arithmetic.
//!
//! The database supplies ages (seconds since each recorded event, inside the window); these
//! functions decide whether one more event is allowed and, if not, when it will be.

/// `ages_oldest_first`: ages in seconds of the events still inside the window, oldest first.
/// Returns `None` when one more event fits, else the whole seconds to wait.
pub fn sliding_window_retry_after(
    ages_oldest_first: &[f64],
    limit: i64,
    window_seconds: f64,
) -> Option<i64> {
    if limit <= 0 {
        return Some(window_seconds.ceil().max(1.0) as i64);
    }
    let n = ages_oldest_first.len();
    let limit = limit as usize;
    if n < limit {
        return None;
    }
    // n - limit + 1 events must leave the window; the youngest of them decides when.
    let blocking_age = ages_oldest_first[n - limit];
    Some(seconds_until(window_seconds - blocking_age))
}

/// `None` when the cooldown has passed since the last event (or there was none).
pub fn cooldown_retry_after(last_event_age: Option<f64>, cooldown_seconds: f64) -> Option<i64> {
    match last_event_age {
        Some(age) if age < cooldown_seconds => Some(seconds_until(cooldown_seconds - age)),
        _ => None,
    }
}

fn seconds_until(remaining: f64) -> i64 {
    remaining.ceil().max(1.0) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_until_the_limit() {
        assert_eq!(sliding_window_retry_after(&[], 3, 300.0), None);
        assert_eq!(sliding_window_retry_after(&[100.0, 50.0], 3, 300.0), None);
    }

    #[test]
    fn blocks_at_the_limit_until_the_oldest_leaves() {
        assert_eq!(
            sliding_window_retry_after(&[100.0, 50.0, 10.0], 3, 300.0),
            Some(200)
        );
        // Over the limit (limit lowered since): wait for enough events to leave.
        assert_eq!(
            sliding_window_retry_after(&[250.0, 100.0, 50.0, 10.0], 3, 300.0),
            Some(200)
        );
        assert_eq!(
            sliding_window_retry_after(&[299.5, 1.0, 1.0], 3, 300.0),
            Some(1)
        );
    }

    #[test]
    fn zero_limit_blocks_everything() {
        assert_eq!(sliding_window_retry_after(&[], 0, 3600.0), Some(3600));
    }

    #[test]
    fn cooldown() {
        assert_eq!(cooldown_retry_after(None, 60.0), None);
        assert_eq!(cooldown_retry_after(Some(61.0), 60.0), None);
        assert_eq!(cooldown_retry_after(Some(59.2), 60.0), Some(1));
        assert_eq!(cooldown_retry_after(Some(0.0), 60.0), Some(60));
        assert_eq!(cooldown_retry_after(Some(5.0), 0.0), None);
    }
}
