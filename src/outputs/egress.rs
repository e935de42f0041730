//! `EGRESS_ALLOW`: the destinations outputs (and the OTLP exporter) may reach.
//!
//! Entries are host names (`ehr.hospital.org`, or `*.hospital.org` for any name under it),
//! `host:port` pairs (`ehr.hospital.org:2575`, `10.1.2.3:5432`, `[fd00::5]:443`), addresses
//! and CIDR ranges (`10.20.0.0/16`, any port). When set:
//!
//! - at load (`check`, startup) a destination that is an address must be in a range or
//!   listed; a name must be listed, unless ranges are listed (it is then checked once
//!   resolved);
//! - before each connection, a name that is not listed is resolved and only the addresses
//!   inside a range are tried; none inside, and the connection is refused with that reason
//!   (the delivery fails and is retried like any other connection failure). A listed name
//!   is trusted with whatever it resolves to.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::units::Cidr;

/// One entry of the list.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    /// A host name (lower case, no trailing dot), a `*.` suffix, or an address as text; the
    /// port when one was given.
    Host { name: String, port: Option<u16> },
    /// An address range, any port.
    Range(Cidr),
}

/// The parsed `EGRESS_ALLOW`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressAllow {
    entries: Vec<Entry>,
    /// The setting as written, for messages.
    text: String,
}

fn normalize(name: &str) -> String {
    name.trim()
        .trim_end_matches('.')
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

impl EgressAllow {
    /// Parse the comma-separated list; `None` when empty (no restriction).
    pub fn parse(text: &str) -> Result<Option<Self>, String> {
        let mut entries = Vec::new();
        for item in text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            entries.push(Self::entry(item)?);
        }
        Ok((!entries.is_empty()).then(|| Self {
            entries,
            text: text.split_whitespace().collect::<Vec<_>>().join(""),
        }))
    }

    fn entry(item: &str) -> Result<Entry, String> {
        if item.contains('/') {
            return Cidr::parse(item).map(Entry::Range);
        }
        if item.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
            return Cidr::parse(item).map(Entry::Range);
        }
        // `host:port`, `[v6]:port`.
        let (host, port) = match item.rsplit_once(':') {
            Some((host, port))
                if !host.is_empty() && (!host.contains(':') || host.ends_with(']')) =>
            {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|port| *port > 0)
                    .ok_or_else(|| {
                        format!("{item:?}: the port must be a number from 1 to 65535")
                    })?;
                (host, Some(port))
            }
            _ => (item, None),
        };
        let name = normalize(host);
        let bare = name.strip_prefix("*.").unwrap_or(&name);
        let valid = name.parse::<IpAddr>().is_ok()
            || (!bare.is_empty()
                && bare.len() <= 253
                && bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')));
        if !valid {
            return Err(format!(
                "{item:?} is not a host name, host:port, address or CIDR range"
            ));
        }
        Ok(Entry::Host { name, port })
    }

    /// The list as set, for messages.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn has_ranges(&self) -> bool {
        self.entries
            .iter()
            .any(|entry| matches!(entry, Entry::Range(_)))
    }

    /// Whether the name `host` (and `port`) is listed (trusted with what it resolves to).
    pub fn lists(&self, host: &str, port: u16) -> bool {
        let host = normalize(host);
        self.entries.iter().any(|entry| match entry {
            Entry::Host { name, port: wanted } => {
                let matches = match name.strip_prefix("*.") {
                    Some(suffix) => host
                        .strip_suffix(suffix)
                        .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
                    None => *name == host,
                };
                matches && wanted.is_none_or(|wanted| wanted == port)
            }
            Entry::Range(_) => false,
        })
    }

    /// Whether the address `ip` (and `port`) may be reached.
    pub fn allows_address(&self, ip: IpAddr, port: u16) -> bool {
        let ip = ip.to_canonical();
        self.entries.iter().any(|entry| match entry {
            Entry::Range(range) => range.contains(ip),
            Entry::Host { name, port: wanted } => {
                name.parse::<IpAddr>()
                    .is_ok_and(|listed| listed.to_canonical() == ip)
                    && wanted.is_none_or(|wanted| wanted == port)
            }
        })
    }

    /// The check at load: `Err` says why `host:port` is outside the list.
    pub fn check(&self, host: &str, port: u16) -> Result<(), String> {
        let bare = normalize(host);
        let allowed = match bare.parse::<IpAddr>() {
            Ok(ip) => self.allows_address(ip, port),
            Err(_) => self.lists(&bare, port) || self.has_ranges(),
        };
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "{host}:{port} is outside EGRESS_ALLOW ({}); add it there, or change the destination",
                self.text
            ))
        }
    }

    /// Resolve `host:port` for a connection: every address when the name is listed, else
    /// only those inside the list; `Err` (naming the addresses) when none may be reached.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let bare = normalize(host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return if self.allows_address(ip, port) {
                Ok(vec![SocketAddr::new(ip, port)])
            } else {
                Err(self.refusal(host, port, &[ip]))
            };
        }
        let found: Vec<SocketAddr> = tokio::net::lookup_host((bare.as_str(), port))
            .await
            .map_err(|error| format!("cannot resolve {host}: {error}"))?
            .collect();
        if self.lists(&bare, port) {
            return Ok(found);
        }
        let allowed: Vec<SocketAddr> = found
            .iter()
            .copied()
            .filter(|addr| self.allows_address(addr.ip(), port))
            .collect();
        if allowed.is_empty() {
            let ips: Vec<IpAddr> = found.iter().map(SocketAddr::ip).collect();
            return Err(self.refusal(host, port, &ips));
        }
        Ok(allowed)
    }

    fn refusal(&self, host: &str, port: u16, ips: &[IpAddr]) -> String {
        let ips: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
        format!(
            "{host}:{port} resolves to {}, outside EGRESS_ALLOW ({}); refused before connecting",
            if ips.is_empty() {
                "no address".to_owned()
            } else {
                ips.join(", ")
            },
            self.text
        )
    }
}

/// `host` and `port` of a URL (`http://`, `https://`), read by the URL parser reqwest
/// itself uses (so `\\`, empty ports, numeric and hexadecimal IPv4 forms and
/// percent-encoding are read as the connection will read them); IPv6 without brackets.
/// `None` when it does not parse or names no host.
pub fn url_destination(url: &str) -> Option<(String, u16)> {
    let parsed = reqwest::Url::parse(url.trim()).ok()?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return None;
    }
    let port = parsed.port_or_known_default()?;
    // The parser writes addresses in their canonical form (IPv6 in brackets).
    let host = parsed.host_str()?.trim_matches(['[', ']']).to_owned();
    (!host.is_empty()).then_some((host, port))
}

/// A resolver for reqwest that asks [`EgressAllow::resolve`] (names in URLs; addresses in
/// URLs are checked at load).
#[derive(Debug, Clone)]
pub struct Resolver {
    /// The list.
    pub allow: Arc<EgressAllow>,
    /// The URL's port (reqwest resolves names only).
    pub port: u16,
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolver = self.clone();
        Box::pin(async move {
            let addrs = resolver
                .allow
                .resolve(name.as_str(), resolver.port)
                .await
                .map_err(|reason| -> Box<dyn std::error::Error + Send + Sync> { reason.into() })?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(text: &str) -> EgressAllow {
        EgressAllow::parse(text).expect("parses").expect("set")
    }

    #[test]
    fn entries_of_every_kind_parse_and_bad_ones_are_named() {
        assert_eq!(EgressAllow::parse(" , ").expect("empty"), None);
        let list = allow(
            "ehr.example.org, lab.example.org:2575, 10.1.0.0/16, 192.0.2.7:5432, [fd00::5]:443, *.pacs.example",
        );
        assert!(list.check("EHR.example.org.", 9).is_ok());
        assert!(list.check("lab.example.org", 2575).is_ok());
        assert!(list.check("10.1.200.3", 1).is_ok());
        assert!(list.check("192.0.2.7", 5432).is_ok());
        assert!(list.check("fd00::5", 443).is_ok());
        assert!(list.check("a.pacs.example", 104).is_ok());
        assert!(list.check("10.2.0.1", 1).is_err());
        assert!(list.check("192.0.2.7", 5433).is_err());
        // A name not listed passes at load only when ranges can judge it once resolved.
        assert!(list.check("pacs.example", 104).is_ok());
        let names = allow("*.pacs.example, lab.example.org:2575");
        assert!(
            names
                .check("pacs.example", 104)
                .is_err_and(|error| error.contains("EGRESS_ALLOW"))
        );
        assert!(names.check("lab.example.org", 2576).is_err());
        assert!(names.check("x.y.pacs.example", 1).is_ok());
        let error = EgressAllow::parse("host:0").expect_err("port 0");
        assert!(error.contains("port"), "{error}");
        assert!(EgressAllow::parse("10.0.0.0/40").is_err());
        assert!(EgressAllow::parse("bad host!").is_err());
    }

    #[test]
    fn names_pass_at_load_only_when_listed_or_ranges_can_judge_them() {
        let names_only = allow("ehr.example.org");
        assert!(names_only.check("other.example.org", 1).is_err());
        let ranges = allow("127.0.0.2/32");
        assert!(ranges.check("localhost", 1).is_ok());
    }

    #[tokio::test]
    async fn a_resolved_name_outside_the_ranges_is_refused() {
        let ranges = allow("127.0.0.2/32");
        let error = ranges.resolve("localhost", 7).await.expect_err("outside");
        assert!(
            error.contains("127.0.0.1") && error.contains("refused"),
            "{error}"
        );
        let inside = allow("127.0.0.0/8");
        let found = inside.resolve("localhost", 7).await.expect("inside");
        assert!(
            found
                .iter()
                .all(|addr| addr.ip().is_loopback() && addr.port() == 7)
        );
        assert!(ranges.resolve("127.0.0.1", 7).await.is_err());
        assert!(
            !allow("localhost")
                .resolve("localhost", 7)
                .await
                .expect("listed")
                .is_empty()
        );
    }

    #[test]
    fn url_destinations() {
        assert_eq!(
            url_destination("https://user:pw@ehr.example:8443/fhir?x=1"),
            Some(("ehr.example".to_owned(), 8443))
        );
        assert_eq!(
            url_destination("http://[fd00::1]/x"),
            Some(("fd00::1".to_owned(), 80))
        );
        assert_eq!(url_destination("ftp://x"), None);
        // Read as the connection reads them, not as text.
        assert_eq!(
            url_destination("http://169.254.169.254:/x"),
            Some(("169.254.169.254".to_owned(), 80))
        );
        assert_eq!(
            url_destination("http://169.254.169.254\\@allowed.example/"),
            Some(("169.254.169.254".to_owned(), 80))
        );
        for numeric in ["http://2852039166/", "http://0xa9.0xfe.0xa9.0xfe/"] {
            assert_eq!(
                url_destination(numeric),
                Some(("169.254.169.254".to_owned(), 80)),
                "{numeric}"
            );
        }
        assert_eq!(url_destination("not a url"), None);
    }
}
