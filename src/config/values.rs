//! Parsers for Go-style setting values: durations (`30s`, `1m30s`, `250ms`), byte sizes
//! (`16MiB`, `1048576`) and listen addresses (`:2575`, `127.0.0.1:2575`, `[::1]:2575`).

use std::time::Duration;

/// Parse a Go duration: one or more `<number><unit>` with units `ns`, `us`/`µs`, `ms`, `s`, `m`,
/// `h`; decimals allowed (`1.5s`); a bare `0` is zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err("empty duration".to_owned());
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_end == 0 {
            return Err(format!("expected a number at {rest:?}"));
        }
        let number: f64 = rest[..number_end]
            .parse()
            .map_err(|_| format!("{:?} is not a number", &rest[..number_end]))?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err("missing unit (use ms, s, m or h, e.g. 30s)".to_owned()),
            other => {
                return Err(format!(
                    "unknown unit {other:?} (use ns, us, ms, s, m or h)"
                ));
            }
        };
        total += number * seconds_per_unit;
        rest = &rest[unit_end..];
    }
    if total > MAX_DURATION_SECS {
        return Err("at most 876000h (100 years)".to_owned());
    }
    Duration::try_from_secs_f64(total).map_err(|_| "duration out of range".to_owned())
}

/// Longest duration accepted: timers built from a longer one could overflow a clock.
const MAX_DURATION_SECS: f64 = 100.0 * 365.0 * 86_400.0;

/// Format a duration the way Go prints simple ones (`30s`, `1m0s` becomes `60s`, `250ms`).
pub fn format_duration(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

/// Parse a byte size: a plain number of bytes, or a number with `KB`/`MB`/`GB` (powers of
/// 1000) or `KiB`/`MiB`/`GiB` (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let number: u64 = text[..split]
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number of bytes"))?;
    let multiplier: u64 = match text[split..].trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "MB" => 1000 * 1000,
        "GB" => 1000 * 1000 * 1000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KiB, MiB, GiB, KB, MB or GB)"
            ));
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| "size out of range".to_owned())
}

/// Split a Go-style listen address into host and port. An empty host (`:2575`) means every
/// interface and is returned as `None`.
pub fn parse_listen_address(text: &str) -> Result<(Option<String>, u16), String> {
    let text = text.trim();
    let Some(colon) = text.rfind(':') else {
        return Err("expected host:port, e.g. :2575 or 127.0.0.1:2575".to_owned());
    };
    let (host, port) = (&text[..colon], &text[colon + 1..]);
    let port: u16 = port
        .parse()
        .map_err(|_| format!("port {port:?} is not a number from 0 to 65535"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.contains(':') && !text.starts_with('[') {
        return Err("write IPv6 addresses in brackets, e.g. [::1]:2575".to_owned());
    }
    Ok(((!host.is_empty()).then(|| host.to_owned()), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ok = [
            ("0", Duration::ZERO),
            ("30s", Duration::from_secs(30)),
            ("1m30s", Duration::from_secs(90)),
            ("250ms", Duration::from_millis(250)),
            ("1.5s", Duration::from_millis(1500)),
            ("2h", Duration::from_secs(7200)),
            ("100us", Duration::from_micros(100)),
        ];
        for (text, expected) in ok {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
        for bad in ["", "30", "s", "30x", "-1s", "1..5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("16 MiB"), Ok(16 << 20));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("16PB").is_err());
        assert!(parse_size("99999999999GiB").is_err());
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen_address(":2575"), Ok((None, 2575)));
        assert_eq!(
            parse_listen_address("127.0.0.1:0"),
            Ok((Some("127.0.0.1".to_owned()), 0))
        );
        assert_eq!(
            parse_listen_address("[::1]:2575"),
            Ok((Some("::1".to_owned()), 2575))
        );
        assert_eq!(
            parse_listen_address("localhost:2575"),
            Ok((Some("localhost".to_owned()), 2575))
        );
        for bad in ["2575", ":port", "::1:2575", "host:70000"] {
            assert!(parse_listen_address(bad).is_err(), "{bad}");
        }
    }
}
