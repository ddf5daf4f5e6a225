//! Client deadlines: a request may say how long its caller will wait (for example
//! `x-request-timeout: 1500` or `2.5s`), and the gateway honours whichever is shorter, its own
//! timeout or the client's, and tells the upstream how much time is left.

/// Parses a timeout: whole milliseconds (`1500`), or a number with `ms` or `s` (`250ms`, `1.5s`).
/// Anything else — negative, empty, another unit, absurdly long (over a day) — is `None`.
pub fn parse_ms(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (text, 1.0)
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let ms = number.parse::<f64>().ok()? * scale;
    (ms.is_finite() && ms <= 86_400_000.0).then_some(ms.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_and_seconds_parse_and_the_rest_is_refused() {
        assert_eq!(parse_ms(b"1500"), Some(1500));
        assert_eq!(parse_ms(b" 250ms "), Some(250));
        assert_eq!(parse_ms(b"1.5s"), Some(1500));
        assert_eq!(parse_ms(b"0"), Some(0));
        for bad in [&b""[..], b"-5", b"5m", b"1e3", b"ms", b"s", b"99999999999", b"\xff", b"1.2.3"]
        {
            assert_eq!(parse_ms(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
