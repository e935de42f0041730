//! The client of a running mfoundry's admin API: where it is (`--admin-addr`, `ADMIN_ADDR`),
//! the token (`ADMIN_TOKEN`, else the server's `DATA_DIR/admin.token`), and typed GET and
//! POST calls whose errors name what to check.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::admin::auth::LOCAL_TOKEN_FILE;

/// Where the admin API is and how to authenticate.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// The admin API's address (the server's ADMIN_ADDR), host:port or a URL.
    #[arg(
        long,
        global = true,
        env = "ADMIN_ADDR",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    pub admin_addr: String,
    /// The server's data directory: its admin.token is used when ADMIN_TOKEN is not set.
    #[arg(
        long,
        global = true,
        env = "DATA_DIR",
        default_value = "./data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,
    /// PEM file of CA certificates to trust, besides the system's, for an admin API served
    /// over HTTPS (ADMIN_TLS_CERT_FILE); given, the address without a scheme means https.
    #[arg(long, global = true, env = "ADMIN_CA_FILE", value_name = "FILE")]
    pub admin_ca: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Where `mfoundry health` asks.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthArgs {
    /// The admin API's address (the server's ADMIN_ADDR), host:port or a URL.
    #[arg(
        long,
        env = "ADMIN_ADDR",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    pub admin_addr: String,
    /// Ask `/livez` (the process runs) instead of `/readyz` (it takes messages).
    #[arg(long)]
    pub live: bool,
    /// PEM file of CA certificates to trust for an admin API served over HTTPS.
    #[arg(long, env = "ADMIN_CA_FILE", value_name = "FILE")]
    pub admin_ca: Option<PathBuf>,
}

/// `mfoundry health`: GET `/readyz` (or `/livez`), print the answer; exit code 0 on 200, 1
/// otherwise. An unreachable server is an error (exit code 2).
pub async fn health(args: &HealthArgs, out: &mut impl std::io::Write) -> anyhow::Result<u8> {
    let path = if args.live { "/livez" } else { "/readyz" };
    let url = format!(
        "{}{path}",
        base_url(&args.admin_addr, args.admin_ca.is_some())
    );
    let response = http_client(args.admin_ca.as_deref())?
        .get(&url)
        .send()
        .await
        .map_err(|error| {
            anyhow::anyhow!(
                "cannot reach {url}: {} (is mfoundry running? check ADMIN_ADDR)",
                error_chain(&error)
            )
        })?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let body = body.trim();
    writeln!(
        out,
        "{path}: {status}{}{body}",
        if body.is_empty() { "" } else { " " }
    )?;
    Ok(if status.is_success() { 0 } else { 1 })
}

/// The admin API's client: bounded in time, no redirects (a token never follows one).
fn http_client(ca: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    crate::tls::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .timeout(crate::admin::api::CLIENT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = ca {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read ADMIN_CA_FILE {}", path.display()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
            format!(
                "ADMIN_CA_FILE {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            )
        })?;
        anyhow::ensure!(
            !certificates.is_empty(),
            "ADMIN_CA_FILE {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        );
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().context("cannot build the HTTP client")
}

/// No query parameters.
pub(crate) const NO_QUERY: &[(&str, &str)] = &[];

/// A client of one server's admin API.
#[derive(Debug)]
pub struct AdminClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// `host:port`, `:port`, `0.0.0.0:port` or a URL → a base URL to connect to.
/// HTTPS when `tls` (a CA was given) or when this process has `ADMIN_TLS_CERT_FILE` (it runs
/// beside a server whose admin API speaks TLS: the container's health check).
fn base_url(addr: &str, tls: bool) -> String {
    let tls =
        tls || std::env::var("ADMIN_TLS_CERT_FILE").is_ok_and(|value| !value.trim().is_empty());
    let addr = addr.trim().trim_end_matches('/');
    let has_scheme = |scheme: &str| {
        addr.get(..scheme.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(scheme))
    };
    if has_scheme("http://") || has_scheme("https://") {
        return addr.to_owned();
    }
    let (host, port) = match addr.rfind(':') {
        Some(colon) => (&addr[..colon], &addr[colon + 1..]),
        None => (addr, "8080"),
    };
    let host = match host {
        "" | "0.0.0.0" => "127.0.0.1",
        "[::]" | "::" => "[::1]",
        other => other,
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{host}:{port}")
}

impl AdminClient {
    /// A client for `args`: the token from `ADMIN_TOKEN`, else `DATA_DIR/admin.token`.
    pub fn new(args: &ApiArgs) -> anyhow::Result<Self> {
        let token = match std::env::var("ADMIN_TOKEN") {
            Ok(token) if !token.trim().is_empty() => token.trim().to_owned(),
            _ => {
                let path = args.data_dir.join(LOCAL_TOKEN_FILE);
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "no token: set ADMIN_TOKEN, or run where the server's {} is readable (--data-dir)",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_owned()
            }
        };
        Ok(Self {
            base: base_url(&args.admin_addr, args.admin_ca.is_some()),
            token,
            http: http_client(args.admin_ca.as_deref())?,
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|error| {
                anyhow::anyhow!(
                    "cannot reach the admin API at {}: {} (is mfoundry running? check ADMIN_ADDR)",
                    self.base,
                    error_chain(&error)
                )
            })?;
        let status = response.status();
        let body = response.bytes().await.context("the answer was cut off")?;
        if !status.is_success() {
            let reason = serde_json::from_slice::<crate::admin::api::ErrorBody>(&body)
                .map(|error| error.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            bail!("{}: {reason}", status);
        }
        serde_json::from_slice(&body).context("the admin API answered something unexpected")
    }

    /// GET `path` with `query`.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &(impl Serialize + ?Sized),
    ) -> anyhow::Result<T> {
        self.call(self.http.get(format!("{}{path}", self.base)).query(query))
            .await
    }

    /// POST `body` as JSON to `path`.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &(impl Serialize + ?Sized),
    ) -> anyhow::Result<T> {
        self.call(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

/// Percent-encode a path segment (connector names are plain, but be safe).
pub(crate) fn segment(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_addresses_become_urls() {
        assert_eq!(base_url(":8080", false), "http://127.0.0.1:8080");
        assert_eq!(base_url("0.0.0.0:9000", false), "http://127.0.0.1:9000");
        assert_eq!(base_url("[::]:8080", false), "http://[::1]:8080");
        assert_eq!(base_url("10.0.0.5:8080", false), "http://10.0.0.5:8080");
        assert_eq!(base_url("https://gw.example/", false), "https://gw.example");
        assert_eq!(base_url("10.0.0.5:8443", true), "https://10.0.0.5:8443");
        assert_eq!(
            base_url("http://10.0.0.5:8080", true),
            "http://10.0.0.5:8080"
        );
    }
}
