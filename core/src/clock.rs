//! The wall clock (what `clock_timestamp()` reads), for times that must not freeze while a
//! transaction is held open: token expiry, TOTP steps, recorder start-up timeouts.

/// Whole seconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_clock_is_past_2025() {
        assert!(super::unix_seconds() > 1_735_689_600);
    }
}
