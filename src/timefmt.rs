//! Wall-clock times as logs and protocols print them (UTC), without a
//! date-time dependency: the access log's `$time_local`, RFC 3339 for
//! syslog lines and status messages.

use std::time::{SystemTime, UNIX_EPOCH};

/// A UTC calendar time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    /// Year, e.g. 2026.
    pub year: i64,
    /// Month, 1-12.
    pub month: u32,
    /// Day of the month, 1-31.
    pub day: u32,
    /// Hour, 0-23.
    pub hour: u32,
    /// Minute, 0-59.
    pub minute: u32,
    /// Second, 0-59.
    pub second: u32,
    /// Milliseconds, 0-999.
    pub millis: u32,
}

/// `t` as a UTC calendar time (times before 1970 read as 1970-01-01).
pub fn civil(t: SystemTime) -> Civil {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Every value below is in range by construction.
    let small = |v: i64| u32::try_from(v).unwrap_or_default();
    Civil {
        year,
        month: small(month),
        day: small(day),
        hour: small((rem / 3600) as i64),
        minute: small((rem % 3600 / 60) as i64),
        second: small((rem % 60) as i64),
        millis: d.subsec_millis(),
    }
}

/// `2026-11-26T12:00:00Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let c = civil(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// `2026-11-26T12:00:00.123Z`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let c = civil(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second, c.millis
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn known_instants() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_694_400_123);
        assert_eq!(rfc3339_millis(t), "2026-11-26T12:00:00.123Z");
        assert_eq!(rfc3339(t), "2026-11-26T12:00:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        // A leap day.
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_767_225_599);
        assert_eq!(rfc3339(t), "2025-12-31T23:59:59Z");
    }
}
