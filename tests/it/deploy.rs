//! Packaging and deployment as a platform engineer meets them. Every Kustomize overlay under
//! `deploy/overlays` renders and keeps the promises of `docs/deploy.md`: probes on `/livez`
//! and `/readyz`, a locked-down pod, a writable volume at `DATA_DIR` (a claim per pod where
//! accepted messages must survive rescheduling), a grace period above the preStop pause plus
//! `DRAIN_TIMEOUT`, TLS from a mounted Secret in prod, MLLP only from labelled namespaces.
//! Every environment variable set in `deploy/` or the Dockerfile is a documented setting, the
//! configuration `deploy/` ships passes `mfoundry check` with each overlay's environment, the
//! image runs the binary as a non-root user, and the Grafana dashboard asks only for metrics
//! and labels the code emits, under the names Prometheus gives them.
//!
//! Rendering needs `kubectl` (its built-in Kustomize). Without it the rendering tests print
//! why they skip, unless `MFOUNDRY_REQUIRE_SERVICES=1`, where they fail.

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

/// `(name, value)` of every `ENV` instruction of the Dockerfile, in order.
fn dockerfile_env(instructions: &[(String, String)]) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for (keyword, arguments) in instructions {
        if keyword != "ENV" {
            continue;
        }
        match arguments.split_once(char::is_whitespace) {
            // Legacy form: `ENV NAME value`.
            Some((name, value)) if !name.contains('=') => {
                pairs.push((name.to_owned(), value.trim().to_owned()));
            }
            _ => {
                for pair in arguments.split_whitespace() {
                    let (name, value) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("Dockerfile: ENV {arguments}: {pair:?}"));
                    pairs.push((name.to_owned(), value.trim_matches('"').to_owned()));
                }
            }
        }
    }
    pairs
}

#[test]
fn every_environment_variable_in_deploy_and_the_dockerfile_is_documented() {
    let documented = documented_variables();

    // The sources: the base, the overlays and their patches.
    let mut files = Vec::new();
    yaml_files(&root().join("deploy"), &mut files);
    assert!(files.len() >= 5, "{files:?}");
    let mut seen = BTreeSet::new();
    for file in &files {
        let origin = file.display().to_string();
        let text = std::fs::read_to_string(file).expect("read");
        for document in yaml_documents(&text, &origin) {
            let mut entries = Vec::new();
            env_entries(&document, &mut entries);
            for entry in entries {
                let name = entry["name"].as_str().expect("a name");
                assert!(
                    documented.contains(name) || is_field_helper(entry),
                    "{origin}: {name} is not in docs/configuration.md (a typo would be ignored by mfoundry)"
                );
                seen.insert(name.to_owned());
            }
        }
    }
    for expected in ["DATA_DIR", "ADMIN_ADDR", "OTEL_EXPORTER_OTLP_ENDPOINT"] {
        assert!(seen.contains(expected), "{expected} not found in {seen:?}");
    }

    // The image.
    let from_image = dockerfile_env(&dockerfile_instructions());
    assert!(!from_image.is_empty(), "the Dockerfile sets no ENV");
    for (name, _) in &from_image {
        assert!(
            documented.contains(name),
            "Dockerfile: ENV {name} is not in docs/configuration.md"
        );
    }

    // What the overlays render: helpers are used, references resolve.
    let Some(overlays) = rendered() else { return };
    for overlay in overlays {
        let env = overlay.container()["env"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: the container has no env", overlay.name));
        let mut defined = BTreeSet::new();
        let mut used = BTreeSet::new();
        for entry in env {
            let name = entry["name"].as_str().expect("a name");
            assert!(
                documented.contains(name) || is_field_helper(entry),
                "{}: {name} is not in docs/configuration.md",
                overlay.name
            );
            if let Some(value) = entry["value"].as_str() {
                for reference in references(value) {
                    assert!(
                        defined.contains(&reference),
                        "{}: {name} uses $({reference}) before it is defined (Kubernetes would leave it unexpanded)",
                        overlay.name
                    );
                    if documented.contains(name) {
                        used.insert(reference);
                    }
                }
            }
            defined.insert(name.to_owned());
        }
        for entry in env.iter().filter(|entry| is_field_helper(entry)) {
            let name = entry["name"].as_str().expect("a name");
            assert!(
                used.contains(name),
                "{}: {name} is neither a documented setting nor used as $({name}) by one",
                overlay.name
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Rendered overlays

/// One overlay as `kubectl kustomize` renders it.
#[derive(Debug)]
struct Overlay {
    name: &'static str,
    objects: Vec<Value>,
}

impl Overlay {
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
            "{}: one workload expected: {workloads:?}",
            self.name
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

fn render(overlay: &'static str) -> Overlay {
    let directory = root().join("deploy/overlays").join(overlay);
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(directory)
        .output()
        .expect("kubectl runs");
    assert!(
        output.status.success(),
        "kubectl kustomize deploy/overlays/{overlay} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    let objects = yaml_documents(&text, &format!("deploy/overlays/{overlay} (rendered)"));
    assert!(!objects.is_empty(), "{overlay} renders nothing");
    Overlay {
        name: overlay,
        objects,
    }
}

/// Every overlay, rendered once; `None` (with the reason printed) where kubectl is missing
/// and services are not required.
fn rendered() -> Option<&'static [Overlay]> {
    static RENDERED: OnceLock<Option<Vec<Overlay>>> = OnceLock::new();
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

#[test]
fn every_overlay_renders_a_statefulset_with_probes_and_a_locked_down_pod() {
    let Some(overlays) = rendered() else { return };
    assert_eq!(overlays.len(), OVERLAYS.len());
    for overlay in overlays {
        let name = overlay.name;
        let pod = overlay.pod();
        let container = overlay.container();

        // Probes, all on the admin API.
        assert_eq!(
            container["livenessProbe"]["httpGet"]["path"], "/livez",
            "{name}"
        );
        assert_eq!(
            container["readinessProbe"]["httpGet"]["path"], "/readyz",
            "{name}"
        );
        let startup = &container["startupProbe"];
        assert!(
            startup["httpGet"]["path"] == "/livez" || startup["httpGet"]["path"] == "/readyz",
            "{name}: startupProbe {startup}"
        );
        let period = startup["periodSeconds"].as_i64().unwrap_or(10);
        let failures = startup["failureThreshold"].as_i64().unwrap_or(3);
        assert!(
            period * failures >= STARTUP_BUDGET_SECONDS,
            "{name}: the startup probe gives up after {}s; opening the outbox after an unclean stop may need {STARTUP_BUDGET_SECONDS}s",
            period * failures
        );
        let admin_address = overlay.effective("ADMIN_ADDR");
        let (admin_host, admin_port) = parse_listen_address(&admin_address)
            .unwrap_or_else(|error| panic!("{name}: ADMIN_ADDR={admin_address:?}: {error}"));
        assert!(
            admin_host.is_none_or(|host| host == "0.0.0.0" || host == "::"),
            "{name}: ADMIN_ADDR={admin_address:?} is not reachable by the kubelet's probes"
        );
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            assert_eq!(
                overlay.container_port(&container[probe]["httpGet"]["port"]),
                Some(i64::from(admin_port)),
                "{name}: {probe} does not reach ADMIN_ADDR={admin_address}"
            );
        }
        let listen_address = overlay.effective("LISTEN_ADDR");
        assert_eq!(
            overlay.container_port(&Value::from(MLLP_PORT_NAME)),
            Some(i64::from(port_of(&listen_address))),
            "{name}: the container port named {MLLP_PORT_NAME} is not LISTEN_ADDR={listen_address}"
        );

        // The pod and the container, locked down.
        assert_eq!(pod["enableServiceLinks"], false, "{name}");
        assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
        let pod_security = &pod["securityContext"];
        let security = &container["securityContext"];
        let effective = |key: &str| {
            if security[key].is_null() {
                pod_security[key].clone()
            } else {
                security[key].clone()
            }
        };
        assert_eq!(effective("runAsNonRoot"), true, "{name}");
        assert_ne!(effective("runAsUser").as_i64(), Some(0), "{name}");
        assert_eq!(
            effective("seccompProfile")["type"],
            "RuntimeDefault",
            "{name}"
        );
        assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
        assert_ne!(security["privileged"], true, "{name}");
        let dropped: Vec<&str> = security["capabilities"]["drop"]
            .as_array()
            .map(|list| list.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert!(dropped.contains(&"ALL"), "{name}: capabilities {dropped:?}");
        assert!(
            security["capabilities"]["add"]
                .as_array()
                .is_none_or(Vec::is_empty),
            "{name}: no capability is added"
        );

        // The other objects an overlay must carry.
        for kind in [
            "ConfigMap",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "ServiceAccount",
        ] {
            assert!(!overlay.of_kind(kind).is_empty(), "{name}: no {kind}");
        }
    }
}

#[test]
fn the_grace_period_covers_the_pre_stop_pause_and_the_drain() {
    let Some(overlays) = rendered() else { return };
    for overlay in overlays {
        let name = overlay.name;
        let container = overlay.container();
        let pre_stop = &container["lifecycle"]["preStop"];
        // The image has no shell: a sleep action, never an exec.
        assert!(
            pre_stop["exec"].is_null(),
            "{name}: preStop exec needs a shell"
        );
        let pause = pre_stop["sleep"]["seconds"]
            .as_i64()
            .unwrap_or_else(|| panic!("{name}: no preStop sleep: {pre_stop}"));
        assert!(pause > 0, "{name}");
        let drain_text = overlay.effective("DRAIN_TIMEOUT");
        let drain = parse_duration(&drain_text)
            .unwrap_or_else(|error| panic!("{name}: DRAIN_TIMEOUT={drain_text}: {error}"));
        // Kubernetes' default grace period is 30 s.
        let grace = overlay.pod()["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(30);
        let needed = drain + Duration::from_secs(u64::try_from(pause).expect("positive"));
        assert!(
            Duration::from_secs(u64::try_from(grace).expect("positive")) > needed,
            "{name}: terminationGracePeriodSeconds={grace} must exceed the preStop pause ({pause}s) plus DRAIN_TIMEOUT={drain_text}"
        );
    }
}

#[test]
fn data_dir_is_a_writable_volume_claimed_per_pod_where_messages_must_survive() {
    let Some(overlays) = rendered() else { return };
    for overlay in overlays {
        let name = overlay.name;
        let data_dir = overlay.effective("DATA_DIR");
        assert!(
            data_dir.starts_with('/'),
            "{name}: DATA_DIR={data_dir} must be an absolute path in a pod"
        );
        let mount = overlay.mount_holding(&data_dir).unwrap_or_else(|| {
            panic!("{name}: nothing is mounted at DATA_DIR={data_dir} (the root filesystem is read-only)")
        });
        assert_ne!(mount["readOnly"], true, "{name}: DATA_DIR is read-only");
        let volume_name = mount["name"].as_str().expect("a volume name");
        if DURABLE.contains(&name) {
            let claim = overlay.claim_template(volume_name).unwrap_or_else(|| {
                panic!("{name}: DATA_DIR must be on a volumeClaimTemplate (a volume per pod), found {:?}", overlay.volume(volume_name))
            });
            assert!(
                overlay.volume(volume_name).is_none(),
                "{name}: a pod volume named {volume_name} shadows the claim"
            );
            let modes: Vec<&str> = claim["spec"]["accessModes"]
                .as_array()
                .map(|modes| modes.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            assert!(
                !modes.is_empty()
                    && modes
                        .iter()
                        .all(|mode| *mode == "ReadWriteOnce" || *mode == "ReadWriteOncePod"),
                "{name}: one pod per volume (redb locks its file), found {modes:?}"
            );
            assert!(
                claim["spec"]["resources"]["requests"]["storage"].is_string(),
                "{name}: the claim requests no storage"
            );
            // A scaled-down pod's volume may still hold undelivered messages.
            assert_ne!(
                overlay.workload()["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"],
                "Delete",
                "{name}"
            );
        } else {
            let volume = overlay
                .volume(volume_name)
                .unwrap_or_else(|| panic!("{name}: no volume {volume_name}"));
            assert!(
                volume["emptyDir"].is_object(),
                "{name}: DATA_DIR on {volume}"
            );
        }
        // Every mount has its volume.
        for mount in overlay.container()["volumeMounts"]
            .as_array()
            .expect("mounts")
        {
            let volume = mount["name"].as_str().expect("a name");
            assert!(
                overlay.volume(volume).is_some() || overlay.claim_template(volume).is_some(),
                "{name}: the mount {mount} has no volume"
            );
        }
    }
}

#[test]
fn files_named_by_settings_are_mounted_and_tls_comes_from_a_secret_in_prod() {
    let Some(overlays) = rendered() else { return };
    for overlay in overlays {
        let name = overlay.name;
        for setting in FILE_SETTINGS {
            let Some(path) = overlay.setting(setting).filter(|path| !path.is_empty()) else {
                continue;
            };
            let mount = overlay
                .mount_holding(&path)
                .unwrap_or_else(|| panic!("{name}: {setting}={path} is not in a mounted volume"));
            // subPath mounts never see updates: a renewed certificate would never arrive.
            assert!(
                mount["subPath"].is_null() && mount["subPathExpr"].is_null(),
                "{name}: {setting} is mounted with a subPath"
            );
            let volume_name = mount["name"].as_str().expect("a name");
            let volume = overlay
                .volume(volume_name)
                .unwrap_or_else(|| panic!("{name}: no volume {volume_name}"));
            if setting.starts_with("TLS_") || *setting == "ADMIN_TOKENS_FILE" {
                assert!(
                    volume["secret"].is_object() || volume["projected"].is_object(),
                    "{name}: {setting} must come from a Secret, not {volume}"
                );
            }
        }
        if WITH_TLS.contains(&name) {
            for setting in ["TLS_CERT_FILE", "TLS_KEY_FILE"] {
                assert!(
                    overlay
                        .setting(setting)
                        .is_some_and(|path| !path.is_empty()),
                    "{name}: {setting} is not set"
                );
            }
            assert_eq!(
                overlay.setting("REQUIRE_TLS").as_deref(),
                Some("true"),
                "{name}: REQUIRE_TLS"
            );
        }
    }
}

/// The ConfigMap generators of the base.
fn generator_names() -> Vec<String> {
    let documents = yaml_documents(
        &read("deploy/base/kustomization.yaml"),
        "deploy/base/kustomization.yaml",
    );
    documents
        .iter()
        .flat_map(|document| {
            document["configMapGenerator"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|generator| generator["name"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_configuration_is_a_generated_config_map_so_a_change_rolls_the_pods() {
    let generators = generator_names();
    assert!(
        !generators.is_empty(),
        "deploy/base has no configMapGenerator"
    );
    let Some(overlays) = rendered() else { return };
    for overlay in overlays {
        let name = overlay.name;
        let config_file = overlay
            .setting("CONFIG_FILE")
            .unwrap_or_else(|| panic!("{name}: CONFIG_FILE is not set"));
        let mount = overlay
            .mount_holding(&config_file)
            .unwrap_or_else(|| panic!("{name}: CONFIG_FILE={config_file} is not mounted"));
        let volume = overlay
            .volume(mount["name"].as_str().expect("a name"))
            .expect("the mount's volume");
        let map_name = volume["configMap"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: CONFIG_FILE is not from a ConfigMap: {volume}"));
        // kustomize appends a hash of the content: a new name changes the pod template.
        let hashed = generators.iter().any(|generator| {
            map_name
                .strip_prefix(generator.as_str())
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|hash| {
                    hash.len() >= 8 && hash.chars().all(|c| c.is_ascii_alphanumeric())
                })
        });
        assert!(
            hashed,
            "{name}: the ConfigMap {map_name} has no content hash (generators {generators:?})"
        );
        let config_map = overlay
            .of_kind("ConfigMap")
            .into_iter()
            .find(|object| object["metadata"]["name"] == map_name)
            .unwrap_or_else(|| panic!("{name}: the ConfigMap {map_name} is not rendered"));
        let file_name = config_file
            .rsplit('/')
            .next()
            .expect("a file name")
            .to_owned();
        assert!(
            config_map["data"][file_name.as_str()].is_string(),
            "{name}: the ConfigMap has no {file_name}"
        );
    }
}

#[test]
fn services_network_policy_and_disruption_budget_select_the_gateway() {
    let Some(overlays) = rendered() else { return };
    for overlay in overlays {
        let name = overlay.name;
        let labels = overlay.pod_labels();
        let workload = overlay.workload();
        assert!(
            selects(&workload["spec"]["selector"]["matchLabels"], labels),
            "{name}: the StatefulSet's selector"
        );
        let mllp_port = overlay
            .container_port(&Value::from(MLLP_PORT_NAME))
            .expect("an mllp port");
        let admin_port = i64::from(port_of(&overlay.effective("ADMIN_ADDR")));

        let services = overlay.of_kind("Service");
        for service in &services {
            assert!(
                selects(&service["spec"]["selector"], labels),
                "{name}: Service {} selects no gateway pod",
                service["metadata"]["name"]
            );
        }
        let serves = |port: i64| {
            services.iter().any(|service| {
                service["spec"]["clusterIP"] != "None"
                    && service["spec"]["ports"].as_array().is_some_and(|ports| {
                        ports
                            .iter()
                            .any(|entry| overlay.container_port(&entry["targetPort"]) == Some(port))
                    })
            })
        };
        assert!(serves(mllp_port), "{name}: no Service for MLLP");
        assert!(serves(admin_port), "{name}: no Service for the admin API");
        let governing = workload["spec"]["serviceName"]
            .as_str()
            .expect("serviceName");
        assert!(
            services
                .iter()
                .any(|service| service["metadata"]["name"] == governing
                    && service["spec"]["clusterIP"] == "None"),
            "{name}: the StatefulSet's headless Service {governing} is missing"
        );

        // MLLP only from labelled namespaces.
        let policies = overlay.of_kind("NetworkPolicy");
        let policy = policies
            .iter()
            .find(|policy| selects(&policy["spec"]["podSelector"]["matchLabels"], labels))
            .unwrap_or_else(|| panic!("{name}: no NetworkPolicy selects the gateway"));
        let types: Vec<&str> = policy["spec"]["policyTypes"]
            .as_array()
            .map(|list| list.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert!(types.contains(&"Ingress"), "{name}: {types:?}");
        let rules = policy["spec"]["ingress"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut mllp_rules = 0;
        for rule in &rules {
            let covers_mllp = match rule["ports"].as_array() {
                None => true,
                Some(ports) => ports
                    .iter()
                    .any(|entry| overlay.container_port(&entry["port"]) == Some(mllp_port)),
            };
            if !covers_mllp {
                continue;
            }
            mllp_rules += 1;
            let peers = rule["from"].as_array().cloned().unwrap_or_default();
            assert!(
                !peers.is_empty(),
                "{name}: an ingress rule opens MLLP to everyone: {rule}"
            );
            for peer in &peers {
                let selector = &peer["namespaceSelector"];
                let labelled = selector["matchLabels"]
                    .as_object()
                    .is_some_and(|labels| !labels.is_empty())
                    || selector["matchExpressions"]
                        .as_array()
                        .is_some_and(|expressions| !expressions.is_empty());
                assert!(
                    labelled && peer["ipBlock"].is_null(),
                    "{name}: MLLP must come only from labelled namespaces: {peer}"
                );
            }
        }
        assert!(mllp_rules > 0, "{name}: the NetworkPolicy lets no MLLP in");

        let budgets = overlay.of_kind("PodDisruptionBudget");
        assert!(
            budgets
                .iter()
                .any(|budget| selects(&budget["spec"]["selector"]["matchLabels"], labels)),
            "{name}: no PodDisruptionBudget selects the gateway"
        );
    }
}

// ---------------------------------------------------------------------------------------
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

#[test]
fn the_deploy_configuration_passes_check_with_each_overlays_environment() {
    let directory = tempfile::tempdir().expect("tempdir");
    let data_dir = directory.path().join("data");

    // Every mfoundry configuration file under deploy/, as written.
    let mut files = Vec::new();
    yaml_files(&root().join("deploy"), &mut files);
    let configs: Vec<&PathBuf> = files
        .iter()
        .filter(|path| path.file_name().is_some_and(|name| name == "mfoundry.yaml"))
        .collect();
    assert!(!configs.is_empty(), "no mfoundry.yaml under deploy/");
    for config in &configs {
        assert_checks(
            &check(config, &[], &data_dir),
            &config.display().to_string(),
        );
    }

    // As each overlay ships it: the ConfigMap's file with the container's settings (files
    // that only exist in the pod, and DATA_DIR, left out).
    let Some(overlays) = rendered() else { return };
    for overlay in overlays {
        let config_file = overlay.setting("CONFIG_FILE").expect("CONFIG_FILE");
        let file_name = config_file.rsplit('/').next().expect("a file name");
        let content = overlay
            .of_kind("ConfigMap")
            .into_iter()
            .find_map(|map| map["data"][file_name].as_str())
            .unwrap_or_else(|| panic!("{}: no ConfigMap holds {file_name}", overlay.name));
        let path = directory
            .path()
            .join(format!("{}-{file_name}", overlay.name));
        std::fs::write(&path, content).expect("write");
        let envs: Vec<(String, String)> = ENV_VARS
            .iter()
            .filter(|var| !FILE_SETTINGS.contains(&var.name) && var.name != "DATA_DIR")
            .filter_map(|var| {
                overlay
                    .setting(var.name)
                    .map(|value| (var.name.to_owned(), value))
            })
            .collect();
        assert!(
            envs.iter().any(|(name, _)| name == "ADMIN_ADDR"),
            "{}: {envs:?}",
            overlay.name
        );
        assert_checks(
            &check(&path, &envs, &data_dir),
            &format!("deploy/overlays/{} with {envs:?}", overlay.name),
        );
    }
}

// ---------------------------------------------------------------------------------------
// The image

/// The Dockerfile's instructions, continuations joined and comments dropped:
/// `(KEYWORD, arguments)`.
fn dockerfile_instructions() -> Vec<(String, String)> {
    let text = read("Dockerfile");
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (current.is_empty() && trimmed.is_empty()) {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, arguments) = current
            .split_once(char::is_whitespace)
            .unwrap_or((current.as_str(), ""));
        instructions.push((keyword.to_ascii_uppercase(), arguments.trim().to_owned()));
        current.clear();
    }
    instructions
}

/// Files the crate embeds (`include_bytes!`, `include_str!`) from outside `src/`, relative
/// to the repository.
fn embedded_files(directory: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(directory).expect("src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            embedded_files(&path, out);
            continue;
        }
        if path.extension().is_none_or(|extension| extension != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("read");
        let parent = path
            .parent()
            .expect("a parent")
            .strip_prefix(root())
            .expect("inside the repository")
            .to_owned();
        for marker in ["include_bytes!(\"", "include_str!(\""] {
            for (start, _) in source.match_indices(marker) {
                let rest = &source[start + marker.len()..];
                let Some(end) = rest.find('"') else { continue };
                let mut parts: Vec<String> = parent
                    .components()
                    .map(|part| part.as_os_str().to_string_lossy().into_owned())
                    .collect();
                for part in rest[..end].split('/') {
                    match part {
                        "" | "." => {}
                        ".." => {
                            parts.pop();
                        }
                        other => parts.push(other.to_owned()),
                    }
                }
                let relative = parts.join("/");
                if !relative.starts_with("src/") {
                    out.insert(relative);
                }
            }
        }
    }
}

#[test]
fn the_dockerfile_builds_a_static_binary_and_runs_it_as_a_non_root_user() {
    let instructions = dockerfile_instructions();
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (keyword, _))| keyword == "FROM")
        .map(|(index, _)| index)
        .collect();
    assert!(stages.len() >= 2, "a multi-stage build: {instructions:?}");
    let build = &instructions[stages[0]..stages[1]];
    let runtime = &instructions[*stages.last().expect("a stage")..];
    let image = |arguments: &str| {
        arguments
            .split_whitespace()
            .find(|word| !word.starts_with("--"))
            .unwrap_or_default()
            .to_owned()
    };
    let build_image = image(build[0].1.as_str());
    let runtime_image = image(runtime[0].1.as_str());
    // A musl build links statically, so the runtime needs no C library.
    assert!(
        build_image.contains("alpine")
            || build
                .iter()
                .any(|(_, arguments)| arguments.contains("musl")),
        "the build stage does not target musl: {build_image}"
    );
    assert!(
        runtime_image.contains("distroless/static"),
        "the runtime base is not minimal and static: {runtime_image}"
    );

    // The dependency layer comes before the sources.
    let step = |found: Option<usize>, what: &str| {
        found.unwrap_or_else(|| panic!("the build stage has no {what}: {build:?}"))
    };
    let manifests = step(
        build
            .iter()
            .position(|(keyword, arguments)| keyword == "COPY" && arguments.contains("Cargo.lock")),
        "COPY of Cargo.lock",
    );
    let dependencies = step(
        build
            .iter()
            .position(|(keyword, arguments)| keyword == "RUN" && arguments.contains("cargo build")),
        "cargo build",
    );
    let sources = step(
        build.iter().position(|(keyword, arguments)| {
            keyword == "COPY" && arguments.split_whitespace().next() == Some("src")
        }),
        "COPY of src",
    );
    assert!(
        manifests < dependencies && dependencies < sources,
        "dependencies must be built before the sources are copied"
    );
    assert!(
        build
            .iter()
            .any(|(keyword, arguments)| keyword == "RUN" && arguments.contains("--locked")),
        "cargo build --locked"
    );
    // Every target named in Cargo.toml exists when the dependency layer builds.
    let text = read("Dockerfile");
    for line in read("Cargo.toml").lines() {
        if let Some(path) = line
            .trim()
            .strip_prefix("path = \"")
            .and_then(|rest| rest.strip_suffix('"'))
        {
            assert!(
                text.contains(path),
                "the Dockerfile does not provide {path}"
            );
        }
    }
    // Files the crate embeds are copied into the build.
    let mut embedded = BTreeSet::new();
    embedded_files(&root().join("src"), &mut embedded);
    let copied: Vec<String> = build
        .iter()
        .filter(|(keyword, arguments)| keyword == "COPY" && !arguments.contains("--from"))
        .flat_map(|(_, arguments)| {
            let words: Vec<&str> = arguments
                .split_whitespace()
                .filter(|word| !word.starts_with("--"))
                .collect();
            words[..words.len().saturating_sub(1)]
                .iter()
                .map(|word| word.trim_end_matches('/').to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    for file in &embedded {
        assert!(
            copied
                .iter()
                .any(|source| file == source || file.starts_with(&format!("{source}/"))),
            "the crate embeds {file}, which the build does not copy ({copied:?})"
        );
    }
    let ignored = read(".dockerignore");
    let ignored: Vec<&str> = ignored
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    assert!(
        ignored
            .iter()
            .any(|line| line.trim_matches('/') == "target" || *line == "**/target"),
        ".dockerignore must leave target/ out: {ignored:?}"
    );
    for file in &embedded {
        assert!(
            !ignored
                .iter()
                .any(|line| file.starts_with(line.trim_matches('/'))),
            ".dockerignore leaves out {file}, which the crate embeds"
        );
    }
    // Keys, certificates and tokens never reach a build context (issue 21).
    for secret in ["**/*.key", "**/*.pem", "**/*.crt", "**/admin.token"] {
        assert!(
            ignored.contains(&secret),
            ".dockerignore must leave {secret} out: {ignored:?}"
        );
    }

    // The runtime stage.
    let last = |wanted: &str| {
        runtime
            .iter()
            .rev()
            .find(|(keyword, _)| keyword == wanted)
            .map(|(_, arguments)| arguments.clone())
            .unwrap_or_else(|| panic!("the runtime stage has no {wanted}"))
    };
    let user = last("USER");
    let uid = user.split(':').next().unwrap_or_default();
    assert!(
        uid.parse::<u32>().is_ok_and(|uid| uid != 0),
        "USER {user}: a numeric non-root user (runAsNonRoot can only verify a number)"
    );
    let entrypoint: Vec<String> =
        serde_json::from_str(&last("ENTRYPOINT")).expect("ENTRYPOINT in exec form (a JSON array)");
    let program = entrypoint.first().expect("a program");
    assert!(program.ends_with("/mfoundry"), "{entrypoint:?}");
    assert!(
        runtime.iter().any(|(keyword, arguments)| keyword == "COPY"
            && arguments.split_whitespace().next_back() == Some(program.as_str())),
        "the ENTRYPOINT {program} is not copied into the runtime stage"
    );
    let env: BTreeMap<String, String> = dockerfile_env(runtime).into_iter().collect();
    let setting = |name: &str| {
        env.get(name)
            .cloned()
            .unwrap_or_else(|| default_of(name).to_owned())
    };
    let admin_address = setting("ADMIN_ADDR");
    let (admin_host, admin_port) = parse_listen_address(&admin_address).expect("ADMIN_ADDR");
    assert!(
        admin_host.is_none_or(|host| host == "0.0.0.0" || host == "::"),
        "ADMIN_ADDR={admin_address}: probes and published ports cannot reach a loopback address"
    );
    assert!(
        setting("DATA_DIR").starts_with('/'),
        "DATA_DIR={} is relative to the working directory",
        setting("DATA_DIR")
    );
    let exposed: BTreeSet<u16> = runtime
        .iter()
        .filter(|(keyword, _)| keyword == "EXPOSE")
        .flat_map(|(_, arguments)| arguments.split_whitespace())
        .filter_map(|port| port.split('/').next()?.parse().ok())
        .collect();
    for port in [port_of(&setting("LISTEN_ADDR")), admin_port] {
        assert!(exposed.contains(&port), "EXPOSE {port}: {exposed:?}");
    }
}

// ---------------------------------------------------------------------------------------
// The Grafana dashboard

fn dashboard() -> Value {
    serde_json::from_str(&read("deploy/grafana/mfoundry.json"))
        .expect("deploy/grafana/mfoundry.json is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn variables(dashboard: &Value) -> Vec<&Value> {
    dashboard["templating"]["list"]
        .as_array()
        .map(|list| list.iter().collect())
        .unwrap_or_default()
}

/// The query text of a Grafana query variable.
fn variable_query(variable: &Value) -> Option<String> {
    match &variable["query"] {
        Value::String(query) => Some(query.clone()),
        Value::Object(map) => map.get("query").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

#[test]
fn the_dashboard_uses_its_datasource_variable_in_every_panel() {
    let dashboard = dashboard();
    let variables = variables(&dashboard);
    let datasource = variables
        .iter()
        .find(|variable| variable["type"] == "datasource")
        .expect("a datasource template variable");
    assert_eq!(datasource["query"], "prometheus");
    let variable = datasource["name"].as_str().expect("a name");
    let accepted = [format!("${{{variable}}}"), format!("${variable}")];
    let uses_it = |source: &Value| {
        source["uid"]
            .as_str()
            .is_some_and(|uid| accepted.iter().any(|wanted| wanted == uid))
            || source
                .as_str()
                .is_some_and(|uid| accepted.iter().any(|wanted| wanted == uid))
    };
    let panels = panels(&dashboard);
    let queried: Vec<&&Value> = panels
        .iter()
        .filter(|panel| panel["type"] != "row")
        .collect();
    assert!(queried.len() >= 10, "{} panels", queried.len());
    let mut ids = BTreeSet::new();
    for panel in &queried {
        let title = &panel["title"];
        assert!(
            ids.insert(panel["id"].as_i64().expect("a panel id")),
            "{title}: duplicate id"
        );
        assert!(
            uses_it(&panel["datasource"]),
            "{title}: {}",
            panel["datasource"]
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            assert!(
                target["datasource"].is_null() || uses_it(&target["datasource"]),
                "{title}: {}",
                target["datasource"]
            );
            assert!(target["expr"].is_string(), "{title}: {target}");
        }
    }
    for variable in variables
        .iter()
        .filter(|variable| variable["type"] == "query")
    {
        assert!(
            uses_it(&variable["datasource"]),
            "variable {}: {}",
            variable["name"],
            variable["datasource"]
        );
    }
}

/// Metric and label names a PromQL expression (or a Grafana `label_values` query) uses.
#[derive(Debug, Default)]
struct QueryNames {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
}

/// Words after which a parenthesised list of labels follows.
const GROUPING_WORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Other PromQL words that are neither metrics nor labels: operators, and aggregations
/// (which may be followed by `by (...)` rather than their parenthesised argument).
const PROMQL_WORDS: &[&str] = &[
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

impl QueryNames {
    fn add_query(&mut self, query: &str) {
        let query = query.trim();
        if let Some(arguments) = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
        {
            match arguments.rsplit_once(',') {
                Some((selector, label)) => {
                    self.add_expression(selector);
                    self.labels.insert(label.trim().to_owned());
                }
                None => {
                    self.labels.insert(arguments.trim().to_owned());
                }
            }
            return;
        }
        self.add_expression(query);
    }

    fn add_expression(&mut self, expression: &str) {
        let characters: Vec<char> = expression.chars().collect();
        let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
        let mut index = 0;
        let mut brace_depth = 0usize;
        let mut grouping_expected = false;
        let mut in_grouping = false;
        while index < characters.len() {
            let character = characters[index];
            match character {
                // Strings: label values, regular expressions, Grafana variables in them.
                '"' | '\'' | '`' => {
                    index += 1;
                    while index < characters.len() && characters[index] != character {
                        if characters[index] == '\\' {
                            index += 1;
                        }
                        index += 1;
                    }
                    index += 1;
                }
                // Ranges: `[5m]`, `[$__rate_interval]`.
                '[' => {
                    while index < characters.len() && characters[index] != ']' {
                        index += 1;
                    }
                    index += 1;
                }
                // Grafana variables: `$name`, `${name}`.
                '$' => {
                    index += 1;
                    if characters.get(index) == Some(&'{') {
                        while index < characters.len() && characters[index] != '}' {
                            index += 1;
                        }
                        index += 1;
                    } else {
                        while index < characters.len() && is_word(characters[index]) {
                            index += 1;
                        }
                    }
                }
                '{' => {
                    brace_depth += 1;
                    index += 1;
                }
                '}' => {
                    brace_depth = brace_depth.saturating_sub(1);
                    index += 1;
                }
                '(' => {
                    in_grouping = grouping_expected;
                    grouping_expected = false;
                    index += 1;
                }
                ')' => {
                    in_grouping = false;
                    index += 1;
                }
                c if c.is_ascii_digit() || c == '.' => {
                    while index < characters.len()
                        && (characters[index].is_ascii_alphanumeric() || characters[index] == '.')
                    {
                        index += 1;
                    }
                }
                c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                    let start = index;
                    while index < characters.len() && is_word(characters[index]) {
                        index += 1;
                    }
                    let word: String = characters[start..index].iter().collect();
                    let next = characters[index..]
                        .iter()
                        .find(|c| !c.is_whitespace())
                        .copied();
                    if in_grouping || brace_depth > 0 {
                        self.labels.insert(word);
                    } else if GROUPING_WORDS.contains(&word.as_str()) {
                        grouping_expected = true;
                    } else if !PROMQL_WORDS.contains(&word.as_str()) && next != Some('(') {
                        // Not a keyword, not a function or aggregation: a metric.
                        self.metrics.insert(word);
                    }
                }
                _ => index += 1,
            }
        }
    }
}

/// Every query of the dashboard: panel targets and query variables.
fn dashboard_names(dashboard: &Value) -> QueryNames {
    let mut names = QueryNames::default();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expression) = target["expr"].as_str() {
                names.add_query(expression);
            }
        }
    }
    for variable in variables(dashboard) {
        if variable["type"] != "query" {
            continue;
        }
        if let Some(query) = variable_query(variable) {
            names.add_query(&query);
        }
        // What Grafana shows for the variable: it must not drift from the query.
        if let Some(definition) = variable["definition"].as_str() {
            names.add_query(definition);
        }
    }
    names
}

/// The metric of the telemetry module a Prometheus series name comes from: dots become
/// underscores, then a unit (`_seconds`, `_bytes`, `_days`) and a kind suffix (`_total`,
/// `_bucket`, `_sum`, `_count`) may follow.
fn metric_for_series(series: &str) -> Option<&'static str> {
    metrics::ALL.iter().copied().find(|name| {
        let base = name.replace('.', "_");
        ["", "_seconds", "_bytes", "_days"].iter().any(|unit| {
            ["", "_total", "_bucket", "_sum", "_count"]
                .iter()
                .any(|kind| format!("{base}{unit}{kind}") == series)
        })
    })
}

/// Labels the exported series carry: the module's attribute keys (dots become
/// underscores), and what Prometheus adds.
fn known_labels() -> BTreeSet<String> {
    let mut labels: BTreeSet<String> = [
        metrics::LISTENER,
        metrics::CONNECTOR,
        metrics::ACK_CODE,
        metrics::CAUSE,
        metrics::OUTCOME,
        metrics::CAP,
    ]
    .iter()
    .map(|key| key.replace('.', "_"))
    .collect();
    // service.name, service.instance.id, histogram bucket bounds.
    labels.extend(["job", "instance", "le"].map(str::to_owned));
    labels
}

#[test]
fn every_metric_and_label_in_the_dashboard_comes_from_the_telemetry_module() {
    let names = dashboard_names(&dashboard());
    assert!(names.metrics.len() >= 10, "{names:?}");
    let unknown: Vec<&String> = names
        .metrics
        .iter()
        .filter(|series| metric_for_series(series).is_none())
        .collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries series no metric of mfoundry::telemetry::metrics::ALL exports: {unknown:?}"
    );
    let known = known_labels();
    let unknown_labels: Vec<&String> = names
        .labels
        .iter()
        .filter(|label| !known.contains(*label))
        .collect();
    assert!(
        unknown_labels.is_empty(),
        "the dashboard uses labels no metric carries: {unknown_labels:?}"
    );
    // The panels: intake per listener, queues per connector (the key alert),
    // delivery, the dead-letter queue, connections, the store, TLS.
    let used: BTreeSet<&str> = names
        .metrics
        .iter()
        .filter_map(|series| metric_for_series(series.as_str()))
        .collect();
    for wanted in [
        metrics::CONSUMED_MESSAGES,
        metrics::ACKS_SENT,
        metrics::QUEUE_DEPTH,
        metrics::QUEUE_OLDEST_AGE,
        metrics::OPERATION_DURATION,
        metrics::DELIVERY_FAILURES,
        metrics::DLQ_SIZE,
        metrics::CONNECTIONS_ACTIVE,
        metrics::STORE_SIZE,
        "mfoundry.tls.certificate.expiry",
        "mfoundry.tls.reloads",
    ] {
        assert!(used.contains(wanted), "no panel shows {wanted}");
    }
}

// What a collector receives, and the names Prometheus gives it.

/// An instrument as OTLP carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    UpDownCounter,
    Gauge,
    Histogram,
    Other,
}

/// Name → (unit, kind) of every metric in the export requests.
fn exported(bodies: &[Vec<u8>]) -> BTreeMap<String, (String, Kind)> {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    use prost::Message as _;
    let mut seen = BTreeMap::new();
    for body in bodies {
        let request = ExportMetricsServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
        for resource in &request.resource_metrics {
            for scope in &resource.scope_metrics {
                for metric in &scope.metrics {
                    let kind = match &metric.data {
                        Some(Data::Sum(sum)) if sum.is_monotonic => Kind::Counter,
                        Some(Data::Sum(_)) => Kind::UpDownCounter,
                        Some(Data::Gauge(_)) => Kind::Gauge,
                        Some(Data::Histogram(_)) => Kind::Histogram,
                        _ => Kind::Other,
                    };
                    seen.insert(metric.name.clone(), (metric.unit.clone(), kind));
                }
            }
        }
    }
    seen
}

/// The series names Prometheus (its OTLP receiver, or a collector's Prometheus exporter)
/// gives a metric: dots to underscores, the unit spelled out unless the name has it,
/// `_total` for counters, `_bucket`/`_sum`/`_count` for histograms; annotations such as
/// `{message}` add nothing.
fn prometheus_series(name: &str, unit: &str, kind: Kind) -> Vec<String> {
    let mut base = name.replace('.', "_");
    let word = match unit {
        "s" => "seconds",
        "ms" => "milliseconds",
        "By" => "bytes",
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "1" if kind == Kind::Gauge => "ratio",
        _ => "",
    };
    if !word.is_empty() && !base.split('_').any(|part| part == word) {
        base = format!("{base}_{word}");
    }
    match kind {
        Kind::Counter => vec![format!("{base}_total")],
        Kind::Histogram => ["bucket", "sum", "count"]
            .iter()
            .map(|suffix| format!("{base}_{suffix}"))
            .collect(),
        Kind::UpDownCounter | Kind::Gauge | Kind::Other => vec![base],
    }
}

#[test]
fn the_dashboard_names_match_what_the_binary_exports() {
    // An OTLP/HTTP receiver on a runtime of its own.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let bodies: Bodies = Arc::default();
    let endpoint = runtime.block_on(http_receiver(Arc::clone(&bodies)));

    // A gateway with one file connector, one message through it.
    let directory = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(directory.path().join("out")).expect("out directory");
    std::fs::write(
        directory.path().join("gateway.yaml"),
        format!(
            "connectors:\n  - name: archive\n    type: file\n    directory: {}\n",
            directory.path().join("out").display()
        ),
    )
    .expect("write");
    let gateway = common::Server::start(
        directory.path(),
        "gateway.yaml",
        "data",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ],
    );
    let message = root().join("examples/messages/adt-a01.hl7");
    let sent = Command::new(BINARY)
        .args(["send", "--addr", gateway.addr.as_str()])
        .arg(message)
        .env_clear()
        .output()
        .expect("send runs");
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );

    // Wait until the exports show the message received and delivered.
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let received = bodies.lock().expect("lock").clone();
        let seen = exported(&received);
        if [
            metrics::PROCESS_DURATION,
            metrics::OPERATION_DURATION,
            metrics::SENT_MESSAGES,
        ]
        .iter()
        .all(|name| seen.contains_key(*name))
        {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "no export showed the delivery: {:?}",
            seen.keys()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    gateway.stop();

    let names = dashboard_names(&dashboard());
    let mut checked = 0;
    let mut by_name_only = Vec::new();
    for series in &names.metrics {
        let Some(metric) = metric_for_series(series) else {
            continue; // reported by the test above
        };
        match seen.get(metric) {
            Some((unit, kind)) => {
                let expected = prometheus_series(metric, unit, *kind);
                assert!(
                    expected.contains(series),
                    "the dashboard queries {series}, but {metric} ({kind:?}, unit {unit:?}) arrives in Prometheus as {expected:?}"
                );
                checked += 1;
            }
            None => by_name_only.push(series.as_str()),
        }
    }
    assert!(
        checked >= 10,
        "only {checked} series checked against an export"
    );
    eprintln!(
        "checked {checked} series against a real export; by name only (not exported without HTTP, PostgreSQL or TLS traffic): {by_name_only:?}"
    );
}
