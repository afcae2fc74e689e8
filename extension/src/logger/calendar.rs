//! Time stamps in osquery's forms: unix seconds, and `calendarTime` as osquery writes it —
//! `asctime()` of UTC, trimmed, plus " UTC" (osquery `osquery/utils/system/time.cpp`,
//! `toAsciiTime`), e.g. `Thu Nov 26 15:43:03 2026 UTC`.

pub use log_sensor_common::clock::now_secs as unix_now;

pub fn ascii_time(unix: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{} {}{:>3} {:02}:{:02}:{:02} {} UTC",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(m - 1) as usize],
        d,
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        y
    )
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_like_asctime() {
        assert_eq!(super::ascii_time(0), "Thu Jan  1 00:00:00 1970 UTC");
        assert_eq!(
            super::ascii_time(1_795_707_783),
            "Thu Nov 26 15:43:03 2026 UTC"
        );
    }
}
