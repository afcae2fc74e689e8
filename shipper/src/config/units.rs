//! Sizes and durations as operators write them: `65536`, `"64KiB"`, `"4 GiB"`, `"5s"`, `"250ms"`.

use std::time::Duration;

/// Parses a byte size: a bare integer, or a number with a unit (B, KB, KiB, MB, MiB, GB, GiB, TB, TiB).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "{text:?} is not a size (expected e.g. 65536 or \"64KiB\")"
        ));
    }
    let n: u64 = num.parse().map_err(|_| format!("{text:?} is too large"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?} (use B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses a duration: a bare number of seconds, or a number with ms, s, m or h.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        format!("{text:?} is not a duration (expected e.g. 5, \"5s\" or \"250ms\")")
    })?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {text:?} (use ms, s, m, h)"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A size as a config file writes it (`list` and `get` show defaults so): a TOML integer.
pub fn size_value(bytes: u64) -> toml::Value {
    toml::Value::Integer(i64::try_from(bytes).unwrap_or(i64::MAX))
}

/// A duration as a config file writes it, in the largest unit that keeps it whole and short:
/// `"250ms"`, `"60s"`, `"5m"`, `"2h"` (what [`parse_duration`] reads back).
pub fn duration_value(d: Duration) -> toml::Value {
    let secs = d.as_secs();
    let text = if d.subsec_nanos() != 0 {
        if d.subsec_nanos() % 1_000_000 == 0 {
            format!("{}ms", d.as_millis())
        } else {
            format!("{}s", d.as_secs_f64())
        }
    } else if secs > 3600 && secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs > 60 && secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    };
    toml::Value::String(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("4 GiB"), Ok(4 << 30));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert!(parse_size("12 parsecs").unwrap_err().contains("unit"));
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("18446744073709551615 GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 fortnights").is_err());
    }

    #[test]
    fn durations_written_back() {
        for (secs_ms, text) in [
            (250, "250ms"),
            (1000, "1s"),
            (1500, "1500ms"),
            (60_000, "60s"),
            (300_000, "5m"),
            (3_600_000, "60m"),
            (7_200_000, "2h"),
            (0, "0s"),
        ] {
            let d = Duration::from_millis(secs_ms);
            let v = duration_value(d);
            assert_eq!(v.as_str(), Some(text));
            assert_eq!(parse_duration(text), Ok(d));
        }
        assert_eq!(size_value(1 << 30), toml::Value::Integer(1 << 30));
    }
}
