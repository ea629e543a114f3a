//! Checked conversion of configured numbers (Admin API, etcd, yaml, config.yaml)
//! into durations and counts. Every such number goes through here, so no value,
//! however large, can overflow a `Duration` or an `Instant` later.
//!
//! APISIX's schemas put no upper bound on timeouts, so large values are
//! accepted and served clamped to [`MAX`] (one year); values that cannot
//! mean a time span (zero, negative, NaN, infinite) give `None`.

use std::time::Duration;

/// The longest duration any configured timeout, delay or interval is served with.
pub const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

/// Positive finite seconds as a duration clamped to [`MAX`]; `None` for zero,
/// negative or non-finite values.
pub fn secs(v: f64) -> Option<Duration> {
    if !(v.is_finite() && v > 0.0) {
        return None;
    }
    if v >= MAX.as_secs_f64() {
        return Some(MAX);
    }
    Duration::try_from_secs_f64(v).ok()
}

/// Whole seconds as a duration clamped to [`MAX`].
pub fn whole_secs(n: u64) -> Duration {
    Duration::from_secs(n.min(MAX.as_secs()))
}

/// Milliseconds as a duration clamped to [`MAX`].
pub fn millis(n: u64) -> Duration {
    Duration::from_millis(n).min(MAX)
}

/// A non-negative number as a `u32`, saturating at `u32::MAX`; `None` for
/// negative or non-finite values.
pub fn count_u32(v: f64) -> Option<u32> {
    if !(v.is_finite() && v >= 0.0) {
        return None;
    }
    // `as` saturates for floats; the range was checked above.
    Some(v.min(f64::from(u32::MAX)) as u32)
}

/// A non-negative number as a `u64`, saturating at `u64::MAX`; `None` for
/// negative or non-finite values.
pub fn count_u64(v: f64) -> Option<u64> {
    (v.is_finite() && v >= 0.0).then_some(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_clamped_never_overflow() {
        assert_eq!(secs(1e300), Some(MAX));
        assert_eq!(secs(f64::MAX), Some(MAX));
        assert_eq!(secs(1e20), Some(MAX));
        assert_eq!(secs(1.5), Some(Duration::from_millis(1500)));
        assert_eq!(secs(0.0), None);
        assert_eq!(secs(-1.0), None);
        assert_eq!(secs(f64::NAN), None);
        assert_eq!(secs(f64::INFINITY), None);
        assert_eq!(whole_secs(u64::MAX), MAX);
        assert_eq!(whole_secs(5), Duration::from_secs(5));
        assert_eq!(millis(u64::MAX), MAX);
        assert_eq!(millis(3000), Duration::from_secs(3));
        // Any clamped value can be added to now.
        let _ = std::time::Instant::now() + MAX;
    }

    #[test]
    fn counts_saturate() {
        assert_eq!(count_u32(1e300), Some(u32::MAX));
        assert_eq!(count_u32(7.0), Some(7));
        assert_eq!(count_u32(-1.0), None);
        assert_eq!(count_u64(1e300), Some(u64::MAX));
        assert_eq!(count_u64(f64::NAN), None);
    }
}
