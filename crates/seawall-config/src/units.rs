//! Human units in the configuration: durations (`250ms`, `1s`, `1.5m`, `2h`) and byte sizes
//! (`512`, `64KiB`, `10MB`, `1GiB`).

use std::time::Duration;

/// Parses a duration such as `250ms`, `1s`, `1.5m`, `2h`, `100us`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let expected = "expected a duration like \"250ms\", \"1s\", \"1.5m\" or \"2h\"";
    let value: f64 = number.parse().map_err(|_| format!("{expected}, got {s:?}"))?;
    let seconds_per_unit = match unit.trim() {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("{expected}, got {s:?} (the unit is required)")),
    };
    let secs = value * seconds_per_unit;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("duration {s:?} is too large"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a size in bytes: a plain number, or a number with `B`, `KB`, `KiB`, `MB`, `MiB`, `GB`, `GiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let expected = "expected a size like 1048576, \"64KiB\", \"10MB\" or \"1GiB\"";
    let value: u64 = number.parse().map_err(|_| format!("{expected}, got {s:?}"))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return Err(format!("{expected}, got {s:?}")),
    };
    value.checked_mul(multiplier).ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").unwrap_err().contains("unit is required"));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("1e300h").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("1.5MB").is_err());
        assert!(parse_size("99999999999999TiB").is_err());
    }
}
