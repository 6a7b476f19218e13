//! Times as `status` shows them (RFC 3339 in UTC, to the millisecond) and as file names carry
//! them (the same without separators).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `at` as RFC 3339 in UTC, with milliseconds (`2026-12-02T17:30:00.123Z`).
pub fn rfc3339(at: SystemTime) -> String {
    utc(at, "-", ":")
}

/// `20261202T173000.123Z`: UTC to the millisecond without separators, for file names (sorts
/// like the time).
pub fn compact(at: SystemTime) -> String {
    utc(at, "", "")
}

/// `at` in UTC with three digits of milliseconds (always, so that times line up in columns;
/// the well-known RFC 3339 format drops trailing zeros), `d` between the date's fields and `t`
/// between the time's.
fn utc(at: SystemTime, d: &str, t: &str) -> String {
    let at = time::OffsetDateTime::from(at);
    format!(
        "{:04}{d}{:02}{d}{:02}T{:02}{t}{:02}{t}{:02}.{:03}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}

/// [`rfc3339`] of a time given in milliseconds since the Unix epoch.
pub fn rfc3339_ms(ms: u64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_to_the_millisecond() {
        assert_eq!(rfc3339_ms(1_796_000_000_123), "2026-11-30T00:53:20.123Z");
        assert_eq!(rfc3339_ms(1_796_000_000_760), "2026-11-30T00:53:20.760Z");
        assert_eq!(rfc3339_ms(1_796_000_000_000), "2026-11-30T00:53:20.000Z");
    }
}
