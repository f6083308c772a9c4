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

/// Per bucket, oldest first, the age of its latest event and its events, from counter rows
/// `[bucket, age of the row's latest event, events]` as a key's shards store them (any order):
/// what [`bucketed_retry_after`] takes. Grouping here rather than in SQL keeps the read a plain
/// index scan.
pub fn buckets_of_shards(rows: &[(f64, f64, f64)]) -> Vec<(f64, i64)> {
    let mut buckets: Vec<(f64, f64, i64)> = Vec::with_capacity(rows.len());
    for &(bucket, age, events) in rows {
        match buckets.iter_mut().find(|b| b.0 == bucket) {
            Some(b) => {
                b.1 = b.1.min(age);
                b.2 += events as i64;
            }
            None => buckets.push((bucket, age, events as i64)),
        }
    }
    buckets.sort_by(|a, b| b.1.total_cmp(&a.1));
    buckets.into_iter().map(|(_, age, n)| (age, n)).collect()
}

/// The newest `limit` of a key's events still inside the window, oldest first (what
/// [`sliding_window_retry_after`] takes), from the ages of its latest events newest first, as a
/// backward index scan reads them. That read may reach further back than the window (the same
/// read finds the last event for a cooldown).
pub fn window_oldest_first(newest_first: &[f64], limit: i64, window_seconds: f64) -> Vec<f64> {
    let mut ages: Vec<f64> = newest_first
        .iter()
        .copied()
        .filter(|age| *age < window_seconds)
        .take(limit.max(0) as usize)
        .collect();
    ages.reverse();
    ages
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
    fn shards_of_a_bucket_count_together_and_its_latest_event_decides() {
        assert_eq!(buckets_of_shards(&[]), vec![]);
        let rows = [
            (1800.0, 30.0, 2.0),
            (900.0, 1000.0, 4.0),
            (1800.0, 5.0, 3.0),
            (900.0, 950.0, 1.0),
        ];
        assert_eq!(buckets_of_shards(&rows), vec![(950.0, 5), (5.0, 5)]);
        assert_eq!(
            bucketed_retry_after(&buckets_of_shards(&rows), 6, 3600.0),
            Some(2650)
        );
    }

    #[test]
    fn the_window_keeps_the_newest_events_inside_it_oldest_first() {
        // Read over a longer cooldown: the 400 s old event is outside a 300 s window.
        assert_eq!(
            window_oldest_first(&[5.0, 100.0, 400.0], 3, 300.0),
            vec![100.0, 5.0]
        );
        assert_eq!(
            window_oldest_first(&[5.0, 100.0, 200.0], 2, 300.0),
            vec![100.0, 5.0]
        );
        assert_eq!(window_oldest_first(&[5.0], 0, 300.0), Vec::<f64>::new());
        assert_eq!(window_oldest_first(&[], 3, 300.0), Vec::<f64>::new());
        assert_eq!(
            sliding_window_retry_after(
                &window_oldest_first(&[5.0, 100.0, 400.0], 2, 300.0),
                2,
                300.0
            ),
            Some(200)
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
