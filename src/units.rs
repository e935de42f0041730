//! Units of settings and the one way to bind them: Go-style durations (`30s`, `1m30s`,
//! `250ms`), byte sizes (`16MiB`, `1048576`), CIDR ranges, listen addresses (`:2575`,
//! `127.0.0.1:2575`, `[::1]:2575`) and [`bind`]. A leaf: it imports nothing of mfoundry, so
//! configuration, the listeners, the admin API and the CLI can all use it.

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

/// An address range: a network and its prefix length (`10.0.0.0/8`, `fd00::/8`, or one
/// address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parse `address/prefix` or a single address.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: std::net::IpAddr = address
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| {
                format!("{text:?} is not an IP address or CIDR range (10.0.0.0/8, fd00::/8)")
            })?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => match prefix.parse::<u8>() {
                Ok(prefix) if prefix <= max => prefix,
                _ => return Err(format!("{text:?}: the prefix length must be 0 to {max}")),
            },
        };
        Ok(Self { network, prefix })
    }

    /// Whether `address` is in the range (an IPv4 address given as IPv4-mapped IPv6 counts as
    /// IPv4).
    pub fn contains(&self, address: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        match (self.network, address.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }
}

/// `count` and the noun in the right number: `1 entry`, `2 entries`, `0 entries`.
pub fn count(count: impl Into<u64>, singular: &str, plural: &str) -> String {
    let count = count.into();
    format!("{count} {}", if count == 1 { singular } else { plural })
}

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

/// A time in microseconds since the epoch as RFC 3339 UTC with milliseconds.
pub fn format_micros(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Bind a Go-style listen address. `:port` binds every interface: IPv6 and IPv4 (dual stack)
/// where the host has IPv6, IPv4 alone where it does not.
pub async fn bind(listen_addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    use tokio::net::TcpListener;
    let (host, port) = parse_listen_address(listen_addr)
        .map_err(|problem| std::io::Error::new(std::io::ErrorKind::InvalidInput, problem))?;
    match host {
        Some(host) => TcpListener::bind((host.as_str(), port)).await,
        None => match TcpListener::bind(("::", port)).await {
            Ok(listener) => Ok(listener),
            Err(_) => TcpListener::bind(("0.0.0.0", port)).await,
        },
    }
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
    fn counts_take_the_noun_in_the_right_number() {
        assert_eq!(count(1u32, "entry", "entries"), "1 entry");
        assert_eq!(count(0u32, "entry", "entries"), "0 entries");
        assert_eq!(count(2u64, "attempt", "attempts"), "2 attempts");
    }

    #[test]
    fn cidr_ranges_match_their_addresses_only() {
        let ip = |text: &str| text.parse::<std::net::IpAddr>().expect("ip");
        let private = Cidr::parse("10.0.0.0/8").expect("parses");
        assert!(private.contains(ip("10.1.2.3")));
        assert!(!private.contains(ip("11.0.0.1")));
        assert!(
            private.contains(ip("::ffff:10.9.9.9")),
            "IPv4-mapped counts as IPv4"
        );
        let host = Cidr::parse("192.168.1.5").expect("parses");
        assert!(host.contains(ip("192.168.1.5")) && !host.contains(ip("192.168.1.6")));
        let everything = Cidr::parse("0.0.0.0/0").expect("parses");
        assert!(everything.contains(ip("8.8.8.8")) && !everything.contains(ip("::1")));
        let v6 = Cidr::parse("fd00::/8").expect("parses");
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!(Cidr::parse("::1").expect("parses").contains(ip("::1")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

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
