//! Packaging and deployment as a platform engineer meets them. Every Kustomize overlay under
//! `deploy/overlays`, and the Helm chart `deploy/helm/mfoundry` with each values example under
//! `deploy/helm/examples`, renders and keeps the promises of `docs/deploy.md`: probes on
//! `/livez` and `/readyz`, a locked-down pod, a writable volume at `DATA_DIR` (a claim per pod
//! where accepted messages must survive rescheduling), a grace period above the preStop pause
//! plus `DRAIN_TIMEOUT`, TLS from a mounted Secret, MLLP only from chosen senders, objects
//! valid for the oldest Kubernetes release mfoundry supports. Every environment variable set
//! in `deploy/` or the Dockerfile is a documented setting, the configuration each deployment
//! ships passes `mfoundry check` with its environment, the image runs the binary as a
//! non-root user, and the Grafana dashboard asks only for metrics and labels the code emits,
//! under the names Prometheus gives them.
//!
//! The overlays are rendered by `kubectl kustomize`; the chart by Helm's own engine and the
//! objects checked against the Kubernetes schemas, both in the Python of
//! `MFOUNDRY_DEPLOY_PYTHON` (helm-python-sdk and kubernetes-validate; `.ci/run` makes it).
//! Without them the rendering tests print why they skip, unless `MFOUNDRY_REQUIRE_SERVICES=1`,
//! where they fail.

pub(crate) mod dashboard;
mod helm;
mod image;
mod manifests;
mod overlays;

use crate::common;

use common::otlp::{Bodies, http_receiver};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mfoundry::config::ENV_VARS;
use mfoundry::telemetry::metrics;
use mfoundry::units::{parse_duration, parse_listen_address};
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_mfoundry");
/// Every overlay under `deploy/overlays`.
const OVERLAYS: &[&str] = &["dev", "staging", "prod", "persistent"];
/// Overlays whose accepted messages must survive a pod being rescheduled.
const DURABLE: &[&str] = &["prod", "persistent"];
/// Overlays that serve MLLP over TLS from a mounted Secret.
const WITH_TLS: &[&str] = &["prod"];
/// The chart.
const CHART: &str = "deploy/helm/mfoundry";
/// The values examples of the chart.
const CHART_EXAMPLES: &str = "deploy/helm/examples";
/// The oldest Kubernetes release mfoundry supports (docs/deploy.md; the preStop `sleep`
/// action is 1.30's).
const OLDEST_KUBERNETES: &str = "1.30.0";
/// The namespace the chart is rendered into.
const CHART_NAMESPACE: &str = "hl7";
/// The least time the startup probe must leave for opening (and repairing) the outbox.
const STARTUP_BUDGET_SECONDS: i64 = 300;
/// Settings that name a file: in a pod it must come from a mounted volume.
const FILE_SETTINGS: &[&str] = &[
    "CONFIG_FILE",
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "TLS_CLIENT_CA",
    "TLS_CLIENT_CRL",
    "ADMIN_TOKENS_FILE",
    "ENCRYPTION_KEY_FILE",
];
/// Container ports must be named so for probes, Services and the NetworkPolicy.
const MLLP_PORT_NAME: &str = "mllp";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(root().join(relative))
        .unwrap_or_else(|error| panic!("{relative}: {error}"))
}

fn services_required() -> bool {
    std::env::var("MFOUNDRY_REQUIRE_SERVICES").is_ok_and(|value| value == "1")
}

fn yaml_documents(text: &str, origin: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap_or_else(|error| panic!("{origin}: not valid YAML: {error}"))
}

/// A scalar as text (`"30s"`, `5`, `true`).
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn default_of(name: &str) -> &'static str {
    ENV_VARS
        .iter()
        .find(|var| var.name == name)
        .unwrap_or_else(|| panic!("{name} is not a setting"))
        .default
}

fn port_of(address: &str) -> u16 {
    parse_listen_address(address)
        .unwrap_or_else(|error| panic!("{address:?}: {error}"))
        .1
}

// ---------------------------------------------------------------------------------------
// Documented variables

/// Every variable a deployment may set: mfoundry's settings and the OpenTelemetry SDK's.
fn documented_variables() -> BTreeSet<String> {
    let names = |heading: &str| -> BTreeSet<String> {
        common::configuration_table(heading).into_keys().collect()
    };
    let settings = names("\n## Environment variables\n");
    let otel = names("\n## OpenTelemetry variables\n");
    assert!(
        settings.contains("DATA_DIR") && settings.contains("DRAIN_TIMEOUT"),
        "the settings table was not found: {settings:?}"
    );
    assert!(
        otel.contains("OTEL_EXPORTER_OTLP_ENDPOINT"),
        "the OpenTelemetry table was not found: {otel:?}"
    );
    settings.union(&otel).cloned().collect()
}

/// Every `env:` entry (a map with a `name`) anywhere in `value`.
fn env_entries<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if key == "env"
                    && let Value::Array(items) = child
                {
                    out.extend(items.iter().filter(|item| item["name"].is_string()));
                }
                env_entries(child, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                env_entries(item, out);
            }
        }
        _ => {}
    }
}

/// A variable set from the pod's own fields (`valueFrom.fieldRef`), only there to be used
/// as `$(NAME)` in a documented variable.
fn is_field_helper(entry: &Value) -> bool {
    entry["valueFrom"]["fieldRef"]["fieldPath"].is_string()
}

/// The `$(NAME)` references in a value (`$$(NAME)` is an escaped literal).
fn references(value: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find("$(") {
        let escaped = rest[..start].ends_with('$');
        let after = &rest[start + 2..];
        let Some(end) = after.find(')') else { break };
        if !escaped {
            found.push(after[..end].to_owned());
        }
        rest = &after[end + 1..];
    }
    found
}

/// The YAML files under `deploy/` that are YAML as written (the chart's templates are Go
/// templates; they are checked as Helm renders them).
fn plain_yaml_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    yaml_files(&root().join("deploy"), &mut files);
    let templates = root().join(CHART).join("templates");
    files.retain(|path| !path.starts_with(&templates));
    files
}

fn yaml_files(directory: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(directory).expect("readable directory") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path
            .extension()
            .is_some_and(|extension| extension == "yaml" || extension == "yml")
        {
            out.push(path);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Rendered deployments

/// How a deployment was rendered.
#[derive(Debug)]
enum Source {
    /// `kubectl kustomize deploy/overlays/<name>`.
    Kustomize,
    /// Helm's engine on the chart with a values file (or the chart's defaults).
    Helm {
        /// NOTES.txt as an install prints it.
        notes: String,
        /// `helm lint --strict` findings.
        lint: Value,
        /// Objects the Kubernetes schemas refuse.
        invalid: Vec<String>,
    },
}

/// One deployment: an overlay as `kubectl kustomize` renders it, or the chart as Helm renders
/// it with one values example.
#[derive(Debug)]
struct Deployment {
    /// `overlay prod`, `chart examples/production.yaml`.
    name: String,
    /// Accepted messages must survive a pod being rescheduled: DATA_DIR on a claim per pod.
    durable: bool,
    /// MLLP over TLS from a mounted Secret, required.
    tls: bool,
    objects: Vec<Value>,
    source: Source,
}

impl Deployment {
    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|object| object["kind"] == kind)
            .collect()
    }

    /// The gateway's workload: one StatefulSet, whatever the overlay.
    fn workload(&self) -> &Value {
        let workloads: Vec<&Value> = self
            .objects
            .iter()
            // A Helm hook (the `helm test` Pod) runs beside the release, not as the gateway.
            .filter(|object| object["metadata"]["annotations"]["helm.sh/hook"].is_null())
            .filter(|object| {
                matches!(
                    object["kind"].as_str(),
                    Some("Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Pod")
                )
            })
            .collect();
        assert_eq!(
            workloads.len(),
            1,
            "{}: one workload expected, found {:?}",
            self.name,
            workloads
                .iter()
                .map(|object| format!("{} {}", object["kind"], object["metadata"]["name"]))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            workloads[0]["kind"], "StatefulSet",
            "{}: the gateway runs as a StatefulSet (stable pod names, a volume per pod where one is claimed)",
            self.name
        );
        workloads[0]
    }

    fn pod(&self) -> &Value {
        &self.workload()["spec"]["template"]["spec"]
    }

    fn pod_labels(&self) -> &Value {
        &self.workload()["spec"]["template"]["metadata"]["labels"]
    }

    fn container(&self) -> &Value {
        self.pod()["containers"]
            .as_array()
            .and_then(|containers| {
                containers
                    .iter()
                    .find(|container| container["name"] == "mfoundry")
            })
            .unwrap_or_else(|| panic!("{}: no container named mfoundry", self.name))
    }

    /// A setting's literal value in the container's environment.
    fn setting(&self, name: &str) -> Option<String> {
        self.container()["env"]
            .as_array()?
            .iter()
            .find(|entry| entry["name"] == name)
            .and_then(|entry| text(&entry["value"]))
    }

    /// A setting's value, or its default.
    fn effective(&self, name: &str) -> String {
        self.setting(name)
            .unwrap_or_else(|| default_of(name).to_owned())
    }

    /// The container port a probe, Service or policy port (number or name) refers to.
    fn container_port(&self, port: &Value) -> Option<i64> {
        if let Some(number) = port.as_i64() {
            return Some(number);
        }
        let name = port.as_str()?;
        self.container()["ports"]
            .as_array()?
            .iter()
            .find(|candidate| candidate["name"] == name)
            .and_then(|candidate| candidate["containerPort"].as_i64())
    }

    /// The volume mount holding `path` (the deepest one).
    fn mount_holding(&self, path: &str) -> Option<&Value> {
        self.container()["volumeMounts"]
            .as_array()?
            .iter()
            .filter(|mount| {
                mount["mountPath"].as_str().is_some_and(|mount_path| {
                    let mount_path = mount_path.trim_end_matches('/');
                    path == mount_path || path.starts_with(&format!("{mount_path}/"))
                })
            })
            .max_by_key(|mount| mount["mountPath"].as_str().map_or(0, str::len))
    }

    /// The pod volume of that name.
    fn volume(&self, name: &str) -> Option<&Value> {
        self.pod()["volumes"]
            .as_array()?
            .iter()
            .find(|volume| volume["name"] == name)
    }

    /// The StatefulSet's claim template of that name.
    fn claim_template(&self, name: &str) -> Option<&Value> {
        self.workload()["spec"]["volumeClaimTemplates"]
            .as_array()?
            .iter()
            .find(|claim| claim["metadata"]["name"] == name)
    }
}

/// Whether every label of `selector` (a `matchLabels` or Service selector) is on `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector.as_object().is_some_and(|selector| {
        !selector.is_empty() && selector.iter().all(|(key, value)| labels[key] == *value)
    })
}

/// `kubectl kustomize DIRECTORY`: the YAML stream.
fn kustomize(directory: &Path) -> String {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(directory)
        .output()
        .expect("kubectl runs");
    assert!(
        output.status.success(),
        "kubectl kustomize {} failed:\n{}",
        directory.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

fn render(overlay: &'static str) -> Deployment {
    let text = kustomize(&root().join("deploy/overlays").join(overlay));
    let objects = yaml_documents(&text, &format!("deploy/overlays/{overlay} (rendered)"));
    assert!(!objects.is_empty(), "{overlay} renders nothing");
    Deployment {
        name: format!("overlay {overlay}"),
        durable: DURABLE.contains(&overlay),
        tls: WITH_TLS.contains(&overlay),
        objects,
        source: Source::Kustomize,
    }
}

/// Every overlay, rendered once; `None` (with the reason printed) where kubectl is missing
/// and services are not required.
fn overlays() -> Option<&'static [Deployment]> {
    static RENDERED: OnceLock<Option<Vec<Deployment>>> = OnceLock::new();
    RENDERED
        .get_or_init(|| {
            let probe = Command::new("kubectl")
                .args(["version", "--client"])
                .output();
            let installed = probe.as_ref().is_ok_and(|output| output.status.success());
            if !installed {
                assert!(
                    !services_required(),
                    "kubectl is required (MFOUNDRY_REQUIRE_SERVICES=1) but `kubectl version --client` failed: {probe:?}"
                );
                eprintln!(
                    "SKIPPED: kubectl is not installed, the overlays are not rendered; set MFOUNDRY_REQUIRE_SERVICES=1 to fail instead"
                );
                return None;
            }
            Some(OVERLAYS.iter().copied().map(render).collect())
        })
        .as_deref()
}

/// The Python with Helm's engine and the Kubernetes schemas (`MFOUNDRY_DEPLOY_PYTHON`);
/// `None` (with the reason printed) where it is missing and services are not required.
fn deploy_python() -> Option<PathBuf> {
    let python = std::env::var_os("MFOUNDRY_DEPLOY_PYTHON").map(PathBuf::from);
    let usable = python.as_ref().is_some_and(|python| {
        Command::new(python)
            .args(["-c", "import helm_python, kubernetes_validate"])
            .output()
            .is_ok_and(|output| output.status.success())
    });
    if usable {
        return python;
    }
    assert!(
        !services_required(),
        "MFOUNDRY_DEPLOY_PYTHON={python:?} must be a Python with helm-python-sdk and kubernetes-validate (MFOUNDRY_REQUIRE_SERVICES=1); .ci/run makes one"
    );
    eprintln!(
        "SKIPPED: no Python with helm-python-sdk and kubernetes-validate in MFOUNDRY_DEPLOY_PYTHON; the chart is not rendered and no object is validated"
    );
    None
}

/// Run `tests/it/deploy/kube.py` with `arguments` (and `input` on stdin); its JSON answer.
fn kube(python: &Path, arguments: &[&str], input: Option<&[u8]>) -> Value {
    use std::io::Write as _;
    let mut child = Command::new(python)
        .arg(root().join("tests/it/deploy/kube.py"))
        .args(arguments)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    let mut stdin = child.stdin.take().expect("stdin");
    if let Some(input) = input {
        stdin.write_all(input).expect("write stdin");
    }
    drop(stdin);
    let output = child.wait_with_output().expect("kube.py ends");
    assert!(
        output.status.success(),
        "kube.py {arguments:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("kube.py prints JSON")
}

/// The chart rendered with `values` (`None`: its defaults) as release `release`.
fn render_chart(python: &Path, values: Option<&Path>, release: &str) -> Deployment {
    let values_argument = values.map_or("-".to_owned(), |path| path.display().to_string());
    let answer = kube(
        python,
        &[
            "helm",
            &root().join(CHART).display().to_string(),
            &values_argument,
            release,
            CHART_NAMESPACE,
            OLDEST_KUBERNETES,
        ],
        None,
    );
    if let Some(error) = answer["error"].as_str() {
        panic!("Helm refuses the chart with {values_argument}: {error}");
    }
    let settings: Value = values.map_or(Value::Null, |path| {
        let text = std::fs::read_to_string(path).expect("values file");
        yaml_documents(&text, &path.display().to_string())
            .pop()
            .unwrap_or(Value::Null)
    });
    let label = values.map_or("defaults".to_owned(), |path| {
        path.file_name()
            .expect("a file name")
            .to_string_lossy()
            .into_owned()
    });
    let invalid = answer["invalid"]
        .as_array()
        .expect("invalid")
        .iter()
        .filter_map(|item| item.as_str().map(str::to_owned))
        .collect();
    Deployment {
        name: format!("chart {label}"),
        durable: settings["persistence"]["enabled"] != false,
        tls: settings["tls"]["secretName"]
            .as_str()
            .is_some_and(|name| !name.is_empty()),
        objects: answer["objects"].as_array().expect("objects").clone(),
        source: Source::Helm {
            notes: answer["notes"].as_str().unwrap_or_default().to_owned(),
            lint: answer["lint"].clone(),
            invalid,
        },
    }
}

/// The chart's values examples.
fn chart_examples() -> Vec<PathBuf> {
    let mut examples = Vec::new();
    yaml_files(&root().join(CHART_EXAMPLES), &mut examples);
    examples.sort();
    examples
}

/// The chart with its defaults and with every values example, rendered once; `None` (with
/// the reason printed) where Helm's engine is missing and services are not required.
fn charts() -> Option<&'static [Deployment]> {
    static RENDERED: OnceLock<Option<Vec<Deployment>>> = OnceLock::new();
    RENDERED
        .get_or_init(|| {
            let python = deploy_python()?;
            let mut rendered = vec![render_chart(&python, None, "mfoundry")];
            for (index, example) in chart_examples().iter().enumerate() {
                // One release name that is not the chart's, for the object names.
                let release = if index == 0 {
                    "hl7-gateway"
                } else {
                    "mfoundry"
                };
                rendered.push(render_chart(&python, Some(example), release));
            }
            Some(rendered)
        })
        .as_deref()
}

/// Every deployment that could be rendered here: the overlays, then the chart's.
fn rendered() -> Vec<&'static Deployment> {
    let mut all: Vec<&'static Deployment> = Vec::new();
    all.extend(overlays().unwrap_or_default());
    all.extend(charts().unwrap_or_default());
    all
}

// The configuration shipped in deploy/

fn check(config: &Path, envs: &[(String, String)], data_dir: &Path) -> Output {
    Command::new(BINARY)
        .arg("check")
        .arg("--config")
        .arg(config)
        .env_clear()
        .envs(
            envs.iter()
                .map(|(name, value)| (name.as_str(), value.as_str())),
        )
        .env("DATA_DIR", data_dir)
        .output()
        .expect("check runs")
}

fn assert_checks(output: &Output, what: &str) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.starts_with("ok: "),
        "{what}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
