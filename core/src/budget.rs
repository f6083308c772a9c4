//! The install's hourly budget as a running tally: the sends counted in each of the latest time
//! buckets, as the budget's counter rows hold them summed over their shards. The extension keeps
//! one tally per database in shared memory when it is preloaded, so that a send reads a few
//! numbers instead of the counter rows every other send is updating.

/// One time bucket: when it starts (seconds since the epoch), its sends, and its latest send.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Bucket {
    pub start: i64,
    pub hits: i64,
    pub last_at: f64,
}

/// Buckets kept: those a window of an hour in buckets of 15 minutes can still reach (five),
/// and one more, which the next bucket takes over.
pub const KEPT: usize = 6;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Tally {
    /// A bucket with `hits == 0` is unused.
    buckets: [Bucket; KEPT],
}

/// The start of the bucket of width `width` seconds that holds `at`.
pub fn bucket_start(at: f64, width: i64) -> i64 {
    (at / width as f64).floor() as i64 * width
}

impl Tally {
    /// The tally of counter rows `(bucket start, age of its latest send, sends)` read at `now`,
    /// one row per bucket and shard (any order).
    pub fn from_rows(rows: &[(f64, f64, f64)], now: f64) -> Tally {
        let mut tally = Tally::default();
        for &(start, age, hits) in rows {
            tally.add(start as i64, now - age, hits as i64);
        }
        tally
    }

    /// Counts `n` sends of the bucket starting at `start`, the latest at `at`. A bucket older
    /// than every kept one is outside any window the tally answers for and is not kept.
    pub fn add(&mut self, start: i64, at: f64, n: i64) {
        if n <= 0 {
            return;
        }
        let slot = match self
            .buckets
            .iter()
            .position(|b| b.hits > 0 && b.start == start)
        {
            Some(i) => i,
            None => {
                let (i, oldest) = self
                    .buckets
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, b)| if b.hits > 0 { b.start } else { i64::MIN })
                    .expect("the tally keeps buckets");
                if oldest.hits > 0 && oldest.start > start {
                    return;
                }
                self.buckets[i] = Bucket {
                    start,
                    hits: 0,
                    last_at: at,
                };
                i
            }
        };
        let b = &mut self.buckets[slot];
        b.hits += n;
        b.last_at = b.last_at.max(at);
    }

    /// The buckets a budget of `window` seconds in buckets of `width` seconds still counts at
    /// `now`, as counter rows `(bucket start, age of its latest send, sends)`: those that started
    /// less than window + width ago and whose latest send is inside the window (as the counter
    /// rows are read).
    pub fn rows(&self, now: f64, window: f64, width: i64) -> Vec<(f64, f64, f64)> {
        self.buckets
            .iter()
            .filter(|b| {
                b.hits > 0
                    && (b.start as f64) > now - (window + width as f64)
                    && b.last_at > now - window
            })
            .map(|b| (b.start as f64, now - b.last_at, b.hits as f64))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::{bucketed_retry_after, buckets_of_shards};

    const W: i64 = 900;
    const H: f64 = 3600.0;

    fn sorted(mut rows: Vec<(f64, f64, f64)>) -> Vec<(f64, f64, f64)> {
        rows.sort_by(|a, b| a.0.total_cmp(&b.0));
        rows
    }

    #[test]
    fn buckets_start_on_multiples_of_their_width() {
        assert_eq!(
            bucket_start(1_800_000_899.9, W),
            1_800_000_000 - 1_800_000_000 % W
        );
        assert_eq!(bucket_start(900.0, W), 900);
        assert_eq!(bucket_start(899.999, W), 0);
    }

    #[test]
    fn shards_of_a_bucket_are_summed_and_keep_the_latest_send() {
        let now = 10_000.0;
        let rows = [
            (9_000.0, 30.0, 2.0),
            (9_000.0, 10.0, 3.0),
            (8_100.0, 500.0, 4.0),
        ];
        let t = Tally::from_rows(&rows, now);
        assert_eq!(
            sorted(t.rows(now, H, W)),
            vec![(8_100.0, 500.0, 4.0), (9_000.0, 10.0, 5.0)]
        );
    }

    #[test]
    fn the_tally_answers_as_the_counter_rows_it_was_made_of() {
        // Eight shards over five buckets, as an hour of sends leaves them.
        let now = 100_000.0;
        let mut rows = Vec::new();
        for b in 0..5 {
            for shard in 0..8 {
                let start = bucket_start(now, W) as f64 - (b * W) as f64;
                rows.push((start, (b * W) as f64 + shard as f64, (b + shard + 1) as f64));
            }
        }
        let t = Tally::from_rows(&rows, now);
        let from_rows =
            buckets_of_shards(&rows.iter().copied().filter(|r| r.1 < H).collect::<Vec<_>>());
        let from_tally = buckets_of_shards(&t.rows(now, H, W));
        assert_eq!(from_tally, from_rows);
        for limit in [1, 50, 150, 1000] {
            assert_eq!(
                bucketed_retry_after(&from_tally, limit, H),
                bucketed_retry_after(&from_rows, limit, H)
            );
        }
    }

    #[test]
    fn sends_add_to_their_bucket_and_new_buckets_take_over_the_oldest() {
        let mut t = Tally::default();
        for i in 0..KEPT as i64 + 2 {
            t.add(i * W, (i * W) as f64 + 1.0, 1);
        }
        t.add(7 * W, (7 * W) as f64 + 5.0, 2);
        let now = (7 * W) as f64 + 10.0;
        // Six buckets are kept (2W to 7W); the hour reaches back to the sends of 4W.
        assert_eq!(
            sorted(t.rows(now, H, W)),
            vec![
                ((4 * W) as f64, now - (4 * W) as f64 - 1.0, 1.0),
                ((5 * W) as f64, now - (5 * W) as f64 - 1.0, 1.0),
                ((6 * W) as f64, now - (6 * W) as f64 - 1.0, 1.0),
                ((7 * W) as f64, 5.0, 3.0),
            ]
        );
        // Twenty seconds earlier, 3W's send was still inside the hour.
        assert_eq!(t.rows(now - 10.0 - 10.0, H, W).len(), 5);
        // A late send of a bucket older than all kept ones is outside every window.
        t.add(0, 2.0, 1);
        assert_eq!(t.rows(now, H, W).len(), 4);
    }

    #[test]
    fn a_bucket_counts_until_its_latest_send_leaves_the_window() {
        let mut t = Tally::default();
        t.add(0, 100.0, 4);
        assert_eq!(t.rows(100.0 + H - 1.0, H, W), vec![(0.0, H - 1.0, 4.0)]);
        assert!(t.rows(100.0 + H, H, W).is_empty());
    }
}
