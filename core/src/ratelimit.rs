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
    let buckets: Vec<(f64, i64)> = ages_oldest_first.iter().map(|a| (*a, 1)).collect();
    bucketed_retry_after(&buckets, limit, window_seconds)
}

/// The same decision for events counted per time bucket, so that a check reads a fixed number
/// of rows: `buckets_oldest_first` holds, per bucket still inside the window, the age of its
/// latest event and how many events it holds. A bucket's events all count until its latest
/// leaves the window, so the limit is never exceeded (it may hold up to one bucket longer).
pub fn bucketed_retry_after(
    buckets_oldest_first: &[(f64, i64)],
    limit: i64,
    window_seconds: f64,
) -> Option<i64> {
    if limit <= 0 {
        return Some(window_seconds.ceil().max(1.0) as i64);
    }
    let total: i64 = buckets_oldest_first.iter().map(|(_, n)| n).sum();
    // total - limit + 1 events must leave the window; the bucket holding the last of them
    // decides when.
    let mut must_leave = total - limit + 1;
    if must_leave <= 0 {
        return None;
    }
    for (age, n) in buckets_oldest_first {
        must_leave -= n;
        if must_leave <= 0 {
            return Some(seconds_until(window_seconds - age));
        }
    }
    Some(seconds_until(window_seconds))
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
    fn buckets_count_all_their_events_until_the_latest_leaves() {
        assert_eq!(bucketed_retry_after(&[], 3, 600.0), None);
        assert_eq!(bucketed_retry_after(&[(300.0, 2)], 3, 600.0), None);
        // Ten events in one bucket whose latest was 10 s ago: 590 s to wait.
        assert_eq!(bucketed_retry_after(&[(10.0, 10)], 10, 600.0), Some(590));
        // The oldest bucket leaving frees enough room.
        assert_eq!(
            bucketed_retry_after(&[(500.0, 4), (100.0, 6)], 10, 600.0),
            Some(100)
        );
        // It does not: the next one must leave too.
        assert_eq!(
            bucketed_retry_after(&[(500.0, 1), (100.0, 9), (5.0, 1)], 10, 600.0),
            Some(500)
        );
        assert_eq!(bucketed_retry_after(&[(1.0, 5)], 0, 60.0), Some(60));
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
