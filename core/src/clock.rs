//! The wall clock (what `clock_timestamp()` reads), for times that must not freeze while a
//! transaction is held open: token expiry, TOTP steps, recorder start-up timeouts.

/// Whole seconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `d` rounded up to whole milliseconds, the unit PostgreSQL's `WaitLatch` counts in: a wait
/// cut down to zero returns at once, and a loop waiting for a time to pass would spin until it
/// did.
pub fn whole_millis(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_millis(d.as_micros().div_ceil(1000) as u64)
}

#[cfg(test)]
mod tests {
    use super::whole_millis;
    use std::time::Duration;

    #[test]
    fn waits_round_up_to_whole_milliseconds() {
        assert_eq!(
            whole_millis(Duration::from_micros(1)),
            Duration::from_millis(1)
        );
        assert_eq!(
            whole_millis(Duration::from_micros(4_600)),
            Duration::from_millis(5)
        );
        assert_eq!(
            whole_millis(Duration::from_millis(5)),
            Duration::from_millis(5)
        );
        assert_eq!(whole_millis(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn the_clock_is_past_2025() {
        assert!(super::unix_seconds() > 1_735_689_600);
    }
}
