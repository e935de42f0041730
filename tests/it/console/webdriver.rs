//! A small W3C WebDriver client for the console's browser tests: Debian's `chromedriver`
//! driving headless `chromium`, both started by the test.

use std::time::Duration;

use serde_json::{Value, json};

/// The key WebDriver names an element by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A `chromedriver` process and one browser session.
pub struct Browser {
    driver: std::process::Child,
    base: String,
    http: reqwest::Client,
    /// Where screenshots go (`MFOUNDRY_SCREENSHOTS`), when set.
    screenshots: Option<std::path::PathBuf>,
    /// The browser's process, killed with the driver if the test fails before `quit`.
    browser_pid: Option<i32>,
}

/// Where Debian installs them.
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/lib/chromium/chromium";

impl Browser {
    /// A headless browser; `None` (after saying why) when chromium or chromedriver is not
    /// installed and services are not required.
    pub async fn start() -> Option<Self> {
        if !std::path::Path::new(CHROMEDRIVER).exists() || !std::path::Path::new(CHROMIUM).exists()
        {
            assert!(
                std::env::var("MFOUNDRY_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "chromium and chromium-driver are required (apt-get install chromium chromium-driver)"
            );
            eprintln!("SKIPPED: chromium or chromium-driver is not installed");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("port")
            .local_addr()
            .expect("addr")
            .port();
        let driver = std::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        mfoundry::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let driver_base = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(response) = http.get(format!("{driver_base}/status")).send().await
                && response.status().is_success()
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver answers"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1100", "--no-first-run", "--disable-extensions"],
            },
        }}});
        let answer: Value = http
            .post(format!("{driver_base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("json");
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_owned();
        let screenshots = std::env::var_os("MFOUNDRY_SCREENSHOTS").map(std::path::PathBuf::from);
        let browser_pid = answer["value"]["capabilities"]["goog:processID"]
            .as_i64()
            .and_then(|pid| i32::try_from(pid).ok());
        Some(Self {
            driver,
            base: format!("{driver_base}/session/{session}"),
            http,
            screenshots,
            browser_pid,
        })
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request
            .send()
            .await
            .expect("webdriver")
            .json()
            .await
            .expect("json");
        answer["value"].clone()
    }

    /// Open `url`.
    pub async fn open(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// The element matching `selector` now, if any.
    async fn find(&self, selector: &str) -> Option<String> {
        let value = self
            .command(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": selector})),
            )
            .await;
        value[ELEMENT].as_str().map(str::to_owned)
    }

    /// The element matching `selector`, waiting up to 20 s for it.
    pub async fn wait(&self, selector: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(element) = self.find(selector).await {
                return element;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{selector} did not appear; the page says: {}",
                self.text("body").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether an element matches `selector` now.
    pub async fn exists(&self, selector: &str) -> bool {
        self.find(selector).await.is_some()
    }

    /// Type `text` into the element matching `selector`, in place of what it held.
    pub async fn type_into(&self, selector: &str, text: &str) {
        let element = self.wait(selector).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{element}/clear"),
            Some(json!({})),
        )
        .await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Click the element matching `selector`.
    pub async fn click(&self, selector: &str) {
        let element = self.wait(selector).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// The visible text of the element matching `selector` (empty when there is none).
    pub async fn text(&self, selector: &str) -> String {
        let Some(element) = self.find(selector).await else {
            return String::new();
        };
        self.command(
            reqwest::Method::GET,
            &format!("/element/{element}/text"),
            None,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Wait up to 30 s until the text of `selector` holds `wanted`.
    pub async fn wait_for_text(&self, selector: &str, wanted: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.text(selector).await;
            if text.contains(wanted) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{selector} never held {wanted:?}; it holds {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Run `script` in the page (an async function body: `arguments[0]` is the callback).
    pub async fn run_async(&self, script: &str) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/async",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// Accept the page's `confirm` dialog.
    pub async fn accept_dialog(&self) {
        self.command(reqwest::Method::POST, "/alert/accept", Some(json!({})))
            .await;
    }

    /// Save a screenshot as `name`.png when `MFOUNDRY_SCREENSHOTS` names a directory.
    pub async fn screenshot(&self, name: &str) {
        let Some(directory) = &self.screenshots else {
            return;
        };
        let value = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await;
        let png = data_encoding::BASE64
            .decode(value.as_str().unwrap_or_default().as_bytes())
            .expect("base64");
        std::fs::create_dir_all(directory).expect("screenshot directory");
        std::fs::write(directory.join(format!("{name}.png")), png).expect("screenshot");
    }
}

impl Browser {
    /// End the browser session (the browser exits), then the driver.
    pub async fn quit(mut self) {
        if self.http.delete(&self.base).send().await.is_ok() {
            // Gone with its session: its id may be another process's soon.
            self.browser_pid = None;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A browser whose session did not end (a failed test) would outlive the driver.
        if let Some(pid) = self.browser_pid.and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
