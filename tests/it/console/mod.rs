//! The operator console: its security over plain HTTP (cookies, CSRF, roles, headers,
//! `/api/v1` still bearer-only), and its pages driven in headless Chromium (`browser`).

mod browser;
mod webdriver;

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use mfoundry::admin::Role;
use mfoundry::admin::auth::{generate_token, hash_token, hex};

/// A tokens file with one token per role, in `directory`.
fn tokens_file(directory: &std::path::Path) -> (String, HashMap<Role, String>) {
    let mut tokens = HashMap::new();
    let mut text = String::new();
    for role in [Role::Viewer, Role::Operator, Role::Admin] {
        let token = generate_token().expect("random");
        text.push_str(&format!(
            "{role}-desk {role} {}\n",
            hex(&hash_token(&token))
        ));
        tokens.insert(role, token);
    }
    let path = directory.join("tokens");
    std::fs::write(&path, text).expect("tokens");
    (path.display().to_string(), tokens)
}

fn client() -> reqwest::Client {
    mfoundry::tls::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Sign in with `token`: the session cookie (as `name=value`) and the CSRF token.
async fn sign_in(base: &str, token: &str) -> (String, String) {
    let response = client()
        .post(format!("{base}/ui/login"))
        .json(&serde_json::json!({ "token": token }))
        .send()
        .await
        .expect("login");
    assert_eq!(response.status(), 200);
    let cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|value| value.to_str().ok())
        .expect("a cookie")
        .to_owned();
    let body: serde_json::Value = response.json().await.expect("json");
    let pair = cookie.split(';').next().expect("pair").to_owned();
    (pair, body["csrf"].as_str().expect("csrf").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_with_strict_headers_and_sessions_guard_every_change() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let (path, tokens) = tokens_file(scratch.path());
    let yaml = "connectors:\n  - name: lab\n    type: file\n    directory: OUT\n    paused: true\n"
        .replace("OUT", &scratch.path().join("out").display().to_string());
    let app = common::start_with_yaml(Some(&yaml), &[("ADMIN_TOKENS_FILE", &path)]).await;
    let base = app.admin_url();
    let http = client();

    // The page: no inline script, a strict policy, no framing; its assets by content name.
    let page = http.get(format!("{base}/ui/")).send().await.expect("page");
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    let policy = headers["content-security-policy"].to_str().expect("csp");
    assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"));
    assert!(!policy.contains("unsafe-inline"));
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["cache-control"], "no-store");
    let html = page.text().await.expect("html");
    let script = html
        .split("src=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a script");
    let asset = http
        .get(format!("{base}{script}"))
        .send()
        .await
        .expect("asset");
    assert_eq!(asset.status(), 200);
    assert!(
        asset.headers()["cache-control"]
            .to_str()
            .expect("text")
            .contains("immutable")
    );
    assert_eq!(
        http.get(format!("{base}/ui/assets/app.000000000000.js"))
            .send()
            .await
            .expect("asset")
            .status(),
        404
    );

    // A wrong token signs nobody in; the right one gets an HttpOnly, SameSite=Strict cookie.
    let refused = http
        .post(format!("{base}/ui/login"))
        .json(&serde_json::json!({"token": "mft_wrong"}))
        .send()
        .await
        .expect("login");
    assert_eq!(refused.status(), 401);
    // A form another site could post (text/plain, no preflight) signs nobody in.
    let form = http
        .post(format!("{base}/ui/login"))
        .header("content-type", "text/plain")
        .body(format!("{{\"token\": \"{}\"}}", tokens[&Role::Operator]))
        .send()
        .await
        .expect("login");
    assert_eq!(form.status(), 403);
    assert!(form.headers().get("set-cookie").is_none());
    let response = http
        .post(format!("{base}/ui/login"))
        .json(&serde_json::json!({"token": tokens[&Role::Operator]}))
        .send()
        .await
        .expect("login");
    let set_cookie = response.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_owned();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    assert!(set_cookie.contains("Path=/ui"));
    let (cookie, csrf) = sign_in(&base, &tokens[&Role::Operator]).await;

    // Reads need the session; changes need its CSRF token too.
    let stats = |cookie: Option<&str>| {
        let mut request = http.get(format!("{base}/ui/api/v1/stats"));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send()
    };
    assert_eq!(stats(None).await.expect("stats").status(), 401);
    assert_eq!(stats(Some(&cookie)).await.expect("stats").status(), 200);
    let resume = |csrf: Option<&str>, cookie: &str| {
        let mut request = http
            .post(format!("{base}/ui/api/v1/connectors/lab/resume"))
            .header("cookie", cookie.to_owned());
        if let Some(csrf) = csrf {
            request = request.header("x-csrf-token", csrf.to_owned());
        }
        request.send()
    };
    assert_eq!(resume(None, &cookie).await.expect("resume").status(), 403);
    assert_eq!(
        resume(Some("0000"), &cookie)
            .await
            .expect("resume")
            .status(),
        403
    );
    assert_eq!(
        resume(Some(&csrf), &cookie).await.expect("resume").status(),
        200
    );
    // Another site's request is refused whatever it carries.
    let cross = http
        .post(format!("{base}/ui/api/v1/connectors/lab/pause"))
        .header("cookie", cookie.clone())
        .header("x-csrf-token", csrf.clone())
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .expect("pause");
    assert_eq!(cross.status(), 403);

    // A viewer's session reads, and is refused what its role may not do.
    let (viewer, viewer_csrf) = sign_in(&base, &tokens[&Role::Viewer]).await;
    assert_eq!(stats(Some(&viewer)).await.expect("stats").status(), 200);
    assert_eq!(
        resume(Some(&viewer_csrf), &viewer)
            .await
            .expect("resume")
            .status(),
        403
    );
    let body = http
        .get(format!("{base}/ui/api/v1/messages/1"))
        .header("cookie", viewer.clone())
        .send()
        .await
        .expect("message");
    assert_eq!(body.status(), 403, "bodies need the operator role");

    // The bearer API does not take the cookie.
    let bearer_only = http
        .get(format!("{base}/api/v1/stats"))
        .header("cookie", cookie.clone())
        .send()
        .await
        .expect("stats");
    assert_eq!(bearer_only.status(), 401);

    // Signing out ends the session; the sign-ins and sign-outs are in the audit trail.
    let out = http
        .post(format!("{base}/ui/logout"))
        .header("cookie", cookie.clone())
        .header("x-csrf-token", csrf.clone())
        .send()
        .await
        .expect("logout");
    assert_eq!(out.status(), 204);
    assert_eq!(stats(Some(&cookie)).await.expect("stats").status(), 401);
    let trail = http
        .get(format!("{base}/api/v1/audit?limit=500"))
        .bearer_auth(&tokens[&Role::Admin])
        .send()
        .await
        .expect("audit")
        .text()
        .await
        .expect("text");
    assert!(trail.contains("console.login") && trail.contains("operator-desk"));
    assert!(trail.contains("console.logout"));
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

/// `ADMIN_TLS_CERT_FILE` and `ADMIN_TLS_KEY_FILE`: the API and the console over HTTPS, and
/// the session cookie marked `Secure`; one without the other stops startup naming both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_https_and_cookies_are_secure_there() {
    let scratch = tempfile::tempdir().expect("tempdir");
    common::certs::certificates(scratch.path());
    let (path, tokens) = tokens_file(scratch.path());
    let cert = scratch.path().join("server.pem").display().to_string();
    let key = scratch.path().join("server.key").display().to_string();
    let app = common::start_with_yaml(
        None,
        &[
            ("ADMIN_TOKENS_FILE", &path),
            ("ADMIN_TLS_CERT_FILE", &cert),
            ("ADMIN_TLS_KEY_FILE", &key),
        ],
    )
    .await;
    let base = app.admin_url().replace("http://", "https://");
    mfoundry::tls::install_crypto_provider();
    let ca = std::fs::read(scratch.path().join("ca.pem")).expect("ca");
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("pem"))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let page = https
        .get(format!("{base}/ui/"))
        .send()
        .await
        .expect("https");
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["strict-transport-security"]
            .to_str()
            .expect("hsts")
            .starts_with("max-age=")
    );
    let login = https
        .post(format!("{base}/ui/login"))
        .json(&serde_json::json!({"token": tokens[&Role::Viewer]}))
        .send()
        .await
        .expect("login");
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_owned();
    assert!(cookie.contains("; Secure"), "{cookie}");
    let stats = https
        .get(format!("{base}/api/v1/stats"))
        .bearer_auth(&tokens[&Role::Viewer])
        .send()
        .await
        .expect("stats");
    assert_eq!(stats.status(), 200);
    // Plain HTTP on the same port gets no answer from the API.
    let plain = client()
        .get(format!("{}/api/v1/stats", app.admin_url()))
        .bearer_auth(&tokens[&Role::Viewer])
        .send()
        .await;
    assert!(plain.is_err() || !plain.expect("answer").status().is_success());
    // The CLI and the health check reach it with the CA (off the runtime: the server
    // answers on this test's threads).
    let (directory, admin, token, ca) = (
        scratch.path().to_owned(),
        app.admin_url().trim_start_matches("http://").to_owned(),
        tokens[&Role::Viewer].clone(),
        scratch.path().join("ca.pem").display().to_string(),
    );
    let (stats, health, refused) = tokio::task::spawn_blocking(move || {
        let env = [
            ("ADMIN_TOKEN", token.as_str()),
            ("ADMIN_CA_FILE", ca.as_str()),
        ];
        (
            common::run_binary(
                &directory,
                &["stats", "--json", "--admin-addr", &admin],
                &env,
            ),
            common::run_binary(&directory, &["health", "--admin-addr", &admin], &env),
            common::run_binary(
                &directory,
                &["stats", "--admin-addr", &format!("https://{admin}")],
                &env[..1],
            ),
        )
    })
    .await
    .expect("the CLI ran");
    assert_eq!(stats.0, 0, "{}", stats.2);
    assert!(stats.1.contains("\"listeners\""), "{}", stats.1);
    assert_eq!(health.0, 0, "{}", health.2);
    assert_ne!(refused.0, 0, "an unknown CA is refused: {}", refused.1);
    assert!(app.shutdown(Duration::from_secs(5)).await);

    let problems = mfoundry::config::Settings::from_lookup(&|name: &str| {
        (name == "ADMIN_TLS_CERT_FILE").then(|| cert.clone())
    })
    .expect_err("refused");
    let text = format!("{problems:?}");
    assert!(text.contains("ADMIN_TLS_KEY_FILE"), "{text}");
}

/// The audit trail newest first, by kind, page after page (what the console's audit page
/// reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_reads_newest_first_and_by_kind() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let (path, tokens) = tokens_file(scratch.path());
    let app = common::start_with_yaml(None, &[("ADMIN_TOKENS_FILE", &path)]).await;
    let base = app.admin_url();
    let mut mllp = common::connect(&app).await;
    for n in 1..=5 {
        common::write(
            &mut mllp,
            &common::framed(&common::adt(&format!("AU{n}"), "2.5")),
        )
        .await;
        common::expect_ack(&mut mllp).await;
    }
    for _ in 0..3 {
        sign_in(&base, &tokens[&Role::Operator]).await;
    }
    let page = |query: &str| {
        let request = client()
            .get(format!("{base}/api/v1/audit?{query}"))
            .bearer_auth(&tokens[&Role::Operator]);
        async move {
            let response = request.send().await.expect("audit");
            let status = response.status();
            (
                status,
                response.json::<serde_json::Value>().await.expect("json"),
            )
        }
    };
    let (status, newest) = page("order=newest&limit=4").await;
    assert_eq!(status, 200);
    let seqs: Vec<u64> = newest["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|record| record["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs.len(), 4);
    assert!(
        seqs.windows(2).all(|pair| pair[0] > pair[1]),
        "newest first: {seqs:?}"
    );
    assert_eq!(newest["records"][0]["action"], "console.login");
    let before = newest["next_before"].as_u64().expect("more");
    assert_eq!(before, *seqs.last().expect("last"));
    let (_, older) = page(&format!("order=newest&limit=100&before={before}")).await;
    let older: Vec<u64> = older["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|record| record["seq"].as_u64().expect("seq"))
        .collect();
    assert!(older.iter().all(|seq| *seq < before));
    assert_eq!(seqs.len() + older.len(), 8, "five received, three sign-ins");
    let (_, received) = page("order=newest&kind=received").await;
    let kinds: Vec<&str> = received["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|record| record["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds, ["received"; 5]);
    assert_eq!(received["records"][0]["control_id"], "AU5");
    assert!(
        received.get("next_before").is_none(),
        "the start of the trail"
    );
    assert_eq!(page("order=sideways").await.0, 400);
    assert_eq!(page("kind=admin").await.0, 400, "kind needs order=newest");
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

/// Every text colour the style sheet sets is readable where it is used (WCAG AA: a
/// contrast of at least 4.5:1): against its own background when the rule sets one, against
/// the header's for the header's rules, else against both page backgrounds (white and the
/// panel grey).
#[test]
fn every_text_colour_of_the_console_has_readable_contrast() {
    let css = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/admin/console/assets/app.css"),
    )
    .expect("the style sheet");
    let rules: Vec<(String, String)> = css
        .split('}')
        .filter_map(|rule| {
            let (selector, body) = rule.split_once('{')?;
            Some((selector.trim().to_owned(), body.to_owned()))
        })
        .collect();
    let variables: HashMap<String, String> = rules
        .iter()
        .filter(|(selector, _)| selector == ":root")
        .flat_map(|(_, body)| body.split(';'))
        .filter_map(|declaration| {
            let (name, value) = declaration.split_once(':')?;
            Some((name.trim().to_owned(), value.trim().to_owned()))
        })
        .collect();
    let property = |body: &str, wanted: &str| -> Option<[f64; 3]> {
        let value = body.split(';').find_map(|declaration| {
            let (name, value) = declaration.split_once(':')?;
            (name.trim() == wanted).then(|| value.trim().to_owned())
        })?;
        let value = match value
            .strip_prefix("var(")
            .and_then(|rest| rest.strip_suffix(')'))
        {
            Some(variable) => variables.get(variable.trim())?.clone(),
            None => value,
        };
        let hex = value.strip_prefix('#')?;
        let hex: String = if hex.len() == 3 {
            hex.chars().flat_map(|c| [c, c]).collect()
        } else {
            hex.get(..6)?.to_owned()
        };
        let channel = |at: usize| {
            u8::from_str_radix(hex.get(at..at + 2)?, 16)
                .ok()
                .map(|value| f64::from(value) / 255.0)
        };
        Some([channel(0)?, channel(2)?, channel(4)?])
    };
    let luminance = |[r, g, b]: [f64; 3]| {
        let linear = |c: f64| {
            if c <= 0.03928 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        };
        0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b)
    };
    let contrast = |a: [f64; 3], b: [f64; 3]| {
        let (x, y) = (luminance(a), luminance(b));
        (x.max(y) + 0.05) / (x.min(y) + 0.05)
    };
    let page = [
        property("background: var(--bg)", "background").expect("--bg"),
        property("background: var(--panel)", "background").expect("--panel"),
    ];
    let header = rules
        .iter()
        .find(|(selector, _)| selector == "header")
        .and_then(|(_, body)| property(body, "background"))
        .expect("the header's background");
    let mut checked = 0;
    for (selector, body) in &rules {
        let Some(text) = property(body, "color") else {
            continue;
        };
        let backgrounds: Vec<[f64; 3]> =
            match property(body, "background").or_else(|| property(body, "background-color")) {
                Some(own) => vec![own],
                None if selector.starts_with("header") => vec![header],
                None => page.to_vec(),
            };
        for background in backgrounds {
            let ratio = contrast(text, background);
            assert!(
                ratio >= 4.5,
                "{selector}: contrast {ratio:.2} is below 4.5:1"
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} colours checked");
}
