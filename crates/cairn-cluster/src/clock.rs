//! The wall clock, and the one way the cluster reads and parses it.
//!
//! Wall time only *labels* things (snapshots, backups, transactions' ages, audit
//! records); it never orders writes, so clock skew between nodes can make a label
//! wrong, never an answer. Everything that reads the clock reads it here, so a test
//! or a simulator has one place to look.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch of an RFC 3339 time, which must carry its
/// offset (`Z` or `+01:00`): a time without one names no instant, and guessing UTC
/// would read the wrong snapshot for anyone whose clock is not.
pub fn parse_rfc3339_ms(text: &str) -> Result<u64, String> {
    let time = chrono::DateTime::parse_from_rfc3339(text).map_err(|e| {
        format!("`{text}` is not an RFC 3339 time with an offset, like 2026-11-23T12:00:00Z or 2026-11-23T13:00:00+01:00 ({e})")
    })?;
    u64::try_from(time.timestamp_millis())
        .map_err(|_| format!("`{text}` is before 1970-01-01T00:00:00Z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_need_an_offset_and_any_offset_is_taken() {
        let utc = parse_rfc3339_ms("2026-11-23T12:00:00Z").unwrap();
        assert_eq!(utc, 1_795_435_200_000);
        assert_eq!(parse_rfc3339_ms("2026-11-23T13:00:00+01:00"), Ok(utc));
        assert_eq!(
            parse_rfc3339_ms("2026-11-23T07:30:00.250-04:30"),
            Ok(utc + 250)
        );
        assert!(parse_rfc3339_ms("2026-11-23T12:00:00")
            .unwrap_err()
            .contains("offset"));
        assert!(parse_rfc3339_ms("yesterday").is_err());
        assert!(parse_rfc3339_ms("1969-12-31T23:59:59Z").is_err());
    }
}
