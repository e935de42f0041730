//! What only the Helm chart must keep: Helm's own engine renders and lints it with every
//! values example, the objects are valid for the oldest supported Kubernetes, the values
//! schema accepts exactly the documented settings under `env:`, the grace period follows
//! `DRAIN_TIMEOUT`, `helm test` asks `/readyz`, and NOTES.txt warns about order with two pods.

use super::*;

/// Settings the chart writes itself from its own values; `env:` may not set them.
const CHART_OWNED: &[&str] = &[
    "CONFIG_FILE",
    "DATA_DIR",
    "LISTEN_ADDR",
    "ADMIN_ADDR",
    "METRICS_ADDR",
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "TLS_CLIENT_CA",
    "ADMIN_TOKENS_FILE",
    "ENCRYPTION_KEY_FILE",
];

fn chart_file(relative: &str) -> String {
    read(&format!("{CHART}/{relative}"))
}

/// `values` (YAML text) in a scratch file, for `use_it`.
fn with_values<T>(values: &str, use_it: impl FnOnce(&Path) -> T) -> T {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("values.yaml");
    std::fs::write(&path, values).expect("write");
    use_it(&path)
}

/// The chart rendered with `values` (YAML text).
fn render_with(python: &Path, values: &str) -> Deployment {
    with_values(values, |path| render_chart(python, Some(path), "mfoundry"))
}

/// The `error` kube.py answers to `command CHART VALUES rest...`: `None` when there is none.
fn kube_error(python: &Path, command: &str, values: &str, rest: &[&str]) -> Option<String> {
    with_values(values, |path| {
        let chart = root().join(CHART).display().to_string();
        let path = path.display().to_string();
        let mut arguments = vec![command, chart.as_str(), path.as_str()];
        arguments.extend_from_slice(rest);
        kube(python, &arguments, None)["error"]
            .as_str()
            .map(str::to_owned)
    })
}

/// Why Helm refuses to render the chart with `values` (YAML text): `None` when it renders.
fn refusal(python: &Path, values: &str) -> Option<String> {
    kube_error(
        python,
        "helm",
        values,
        &["mfoundry", CHART_NAMESPACE, OLDEST_KUBERNETES],
    )
}

/// The schema's verdict on `values` (YAML text): `None` when they pass.
fn schema_error(python: &Path, values: &str) -> Option<String> {
    kube_error(python, "schema-error", values, &[])
}

#[test]
fn the_chart_runs_this_release_on_supported_kubernetes() {
    let chart = yaml_documents(&chart_file("Chart.yaml"), "Chart.yaml").remove(0);
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(
        chart["appVersion"],
        env!("CARGO_PKG_VERSION"),
        "Chart.yaml appVersion must be the crate's version (the default image tag)"
    );
    let oldest = OLDEST_KUBERNETES.trim_end_matches(".0");
    assert!(
        chart["kubeVersion"]
            .as_str()
            .is_some_and(|range| range.contains(&format!(">={oldest}"))),
        "Chart.yaml kubeVersion must start at {oldest}: {}",
        chart["kubeVersion"]
    );
    assert!(
        read("docs/deploy.md").contains(&format!("Kubernetes {oldest} or later")),
        "docs/deploy.md must name Kubernetes {oldest} as the oldest supported release"
    );
}

#[test]
fn the_chart_renders_lints_and_validates_with_every_values_example() {
    let examples = chart_examples();
    assert!(examples.len() >= 4, "values examples: {examples:?}");
    let Some(charts) = charts() else { return };
    assert_eq!(charts.len(), examples.len() + 1);
    for chart in charts {
        let Source::Helm { lint, invalid, .. } = &chart.source else {
            unreachable!("charts() renders the chart")
        };
        assert!(
            lint["errors"].as_array().is_some_and(Vec::is_empty),
            "{}: helm lint --strict: {lint}",
            chart.name
        );
        // Severity 2 is a warning, 3 an error; 1 (information) is advice such as an icon.
        let findings: Vec<&Value> = lint["messages"]
            .as_array()
            .map(|messages| {
                messages
                    .iter()
                    .filter(|message| message["severity"].as_i64().unwrap_or(3) >= 2)
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            findings.is_empty(),
            "{}: helm lint --strict: {findings:?}",
            chart.name
        );
        assert!(
            invalid.is_empty(),
            "{}: refused by the Kubernetes {OLDEST_KUBERNETES} schemas: {invalid:?}",
            chart.name
        );
        assert!(
            chart.objects.len() >= 8,
            "{}: {:?}",
            chart.name,
            chart.objects
        );
    }
}

#[test]
fn the_values_schema_accepts_exactly_the_documented_settings() {
    let schema: Value =
        serde_json::from_str(&chart_file("values.schema.json")).expect("values.schema.json");
    assert_eq!(
        schema["properties"]["env"]["additionalProperties"], false,
        "env: must refuse names that are not settings"
    );
    let in_schema: BTreeSet<&str> = schema["properties"]["env"]["properties"]
        .as_object()
        .expect("env properties")
        .keys()
        .map(String::as_str)
        .collect();
    let settings: BTreeSet<&str> = ENV_VARS.iter().map(|var| var.name).collect();
    let owned: BTreeSet<&str> = CHART_OWNED.iter().copied().collect();
    for name in &owned {
        assert!(settings.contains(name), "{name} is not a setting any more");
    }
    let expected: BTreeSet<&str> = settings.difference(&owned).copied().collect();
    assert_eq!(
        in_schema, expected,
        "values.schema.json env: must list every setting of ENV_VARS except those the chart sets"
    );
    // The template refuses the same names, and sets each of them itself.
    let template = chart_file("templates/statefulset.yaml");
    let refused = template
        .lines()
        .find(|line| line.contains("$owned := list"))
        .expect("the template's list of settings it owns");
    for name in CHART_OWNED {
        assert!(
            refused.contains(&format!("\"{name}\"")),
            "the template does not refuse env.{name}"
        );
        assert!(
            template.contains(&format!("- name: {name}\n")),
            "the template never sets {name}"
        );
    }
    let values = chart_file("values.yaml");
    for name in CHART_OWNED {
        assert!(
            values.contains(name),
            "values.yaml does not say the chart sets {name}"
        );
    }

    let Some(python) = deploy_python() else {
        return;
    };
    assert_eq!(
        schema_error(
            &python,
            "env:\n  MAX_CONNECTIONS: 32\n  REQUIRE_TLS: true\n"
        ),
        None
    );
    let misspelt = schema_error(&python, "env:\n  MAX_CONECTIONS: 32\n").expect("refused");
    assert!(misspelt.contains("MAX_CONECTIONS"), "{misspelt}");
    let owned_error = schema_error(&python, "env:\n  DATA_DIR: /tmp\n").expect("refused");
    assert!(owned_error.contains("DATA_DIR"), "{owned_error}");
    let unknown_key = schema_error(&python, "persistance:\n  enabled: true\n").expect("refused");
    assert!(unknown_key.contains("persistance"), "{unknown_key}");
    let compound = schema_error(&python, "env:\n  DRAIN_TIMEOUT: 1m30s\n").expect("refused");
    assert!(compound.contains("DRAIN_TIMEOUT"), "{compound}");
    // mfoundry refuses a zero drain, and Kubernetes before 1.33 a zero preStop sleep.
    let zero = schema_error(&python, "env:\n  DRAIN_TIMEOUT: 0s\n").expect("refused");
    assert!(zero.contains("DRAIN_TIMEOUT"), "{zero}");
    let no_pause = schema_error(&python, "preStopSeconds: 0\n").expect("refused");
    assert!(no_pause.contains("preStopSeconds"), "{no_pause}");
}

#[test]
fn the_grace_period_follows_drain_timeout_and_the_config_checksum_rolls_the_pods() {
    let Some(python) = deploy_python() else {
        return;
    };
    for (drain, seconds) in [("90s", 90), ("2m", 120), ("1500ms", 2)] {
        let chart = render_with(&python, &format!("env:\n  DRAIN_TIMEOUT: \"{drain}\"\n"));
        let pod = chart.pod();
        let pause = chart.container()["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_i64()
            .expect("preStop sleep");
        let grace = pod["terminationGracePeriodSeconds"]
            .as_i64()
            .expect("grace");
        assert!(
            grace > pause + seconds,
            "DRAIN_TIMEOUT={drain}: grace {grace}s, preStop {pause}s"
        );
        assert!(
            grace <= pause + seconds + 60,
            "DRAIN_TIMEOUT={drain}: grace {grace}s is far above the need"
        );
    }
    let annotation = |chart: &Deployment| {
        chart.workload()["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            .as_str()
            .expect("checksum/config")
            .to_owned()
    };
    let first = render_with(&python, "config: |\n  connectors: []\n");
    let second = render_with(
        &python,
        "config: |\n  connectors: []\n  validation:\n    rules: []\n",
    );
    assert_ne!(annotation(&first), annotation(&second));
}

#[test]
fn helm_test_asks_readyz_through_the_admin_service() {
    let Some(charts) = charts() else { return };
    for chart in charts {
        let name = &chart.name;
        let hook = chart
            .of_kind("Pod")
            .into_iter()
            .find(|pod| pod["metadata"]["annotations"]["helm.sh/hook"] == "test")
            .unwrap_or_else(|| panic!("{name}: no helm test Pod"));
        let arguments: Vec<&str> = hook["spec"]["containers"][0]["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(arguments.first(), Some(&"health"), "{name}: {arguments:?}");
        let address = arguments
            .iter()
            .skip_while(|argument| **argument != "--admin-addr")
            .nth(1)
            .expect("--admin-addr");
        let admin_port = port_of(&chart.effective("ADMIN_ADDR"));
        let service = chart
            .of_kind("Service")
            .into_iter()
            .find(|service| {
                service["spec"]["clusterIP"] != "None"
                    && service["spec"]["ports"].as_array().is_some_and(|ports| {
                        ports.iter().any(|port| {
                            chart.container_port(&port["targetPort"]) == Some(i64::from(admin_port))
                        })
                    })
            })
            .expect("the admin Service");
        let service_port = service["spec"]["ports"][0]["port"].as_i64().expect("port");
        assert_eq!(
            *address,
            format!(
                "http://{}:{service_port}",
                service["metadata"]["name"].as_str().expect("name")
            ),
            "{name}"
        );
        // The NetworkPolicy lets the test pod reach the admin port.
        let labels = &hook["metadata"]["labels"];
        let admitted = chart.of_kind("NetworkPolicy").iter().any(|policy| {
            policy["spec"]["ingress"].as_array().is_some_and(|rules| {
                rules.iter().any(|rule| {
                    rule["ports"].as_array().is_some_and(|ports| {
                        ports.iter().any(|port| {
                            chart.container_port(&port["port"]) == Some(i64::from(admin_port))
                        })
                    }) && rule["from"].as_array().is_some_and(|peers| {
                        peers
                            .iter()
                            .any(|peer| selects(&peer["podSelector"]["matchLabels"], labels))
                    })
                })
            })
        });
        assert!(admitted, "{name}: the NetworkPolicy keeps the test pod out");
    }

    // What the hook runs: `mfoundry health` answers 0 on a ready server, 2 on none.
    let directory = tempfile::tempdir().expect("tempdir");
    std::fs::write(directory.path().join("gateway.yaml"), "connectors: []\n").expect("write");
    let server = common::Server::start(directory.path(), "gateway.yaml", "data", &[]);
    let health = |address: &str| {
        Command::new(BINARY)
            .args(["health", "--admin-addr", address])
            .env_clear()
            .output()
            .expect("health runs")
    };
    let admin = server.admin_addr.clone().expect("admin API on");
    let ready = health(&admin);
    assert_eq!(
        ready.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&ready.stdout),
        String::from_utf8_lossy(&ready.stderr)
    );
    assert!(String::from_utf8_lossy(&ready.stdout).contains("/readyz: 200"));
    let live = Command::new(BINARY)
        .args(["health", "--live", "--admin-addr", &admin])
        .env_clear()
        .output()
        .expect("health runs");
    assert!(String::from_utf8_lossy(&live.stdout).contains("/livez: 200"));
    server.stop();
    let gone = health(&admin);
    assert_eq!(gone.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("ADMIN_ADDR"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
}

#[test]
fn notes_warn_about_order_with_several_pods_and_about_lost_messages_without_a_volume() {
    let Some(python) = deploy_python() else {
        return;
    };
    let notes = |chart: &Deployment| match &chart.source {
        Source::Helm { notes, .. } => notes.clone(),
        Source::Kustomize => unreachable!("a chart"),
    };
    let single = notes(&render_with(&python, "replicas: 1\n"));
    assert!(!single.contains("WARNING"), "{single}");
    assert!(single.contains("helm test"), "{single}");
    let two = notes(&render_with(&python, "replicas: 2\n"));
    assert!(
        two.contains("WARNING") && two.contains("order"),
        "two pods: {two}"
    );
    let no_volume = notes(&render_with(&python, "persistence:\n  enabled: false\n"));
    assert!(
        no_volume.contains("WARNING") && no_volume.contains("lost"),
        "{no_volume}"
    );
}

#[test]
fn the_readme_values_render_with_tls_and_persistence() {
    let readme = read("README.md");
    let section = readme
        .split("\n## Deploy with Helm\n")
        .nth(1)
        .expect("README.md has a Deploy with Helm section");
    let values = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a values example in Deploy with Helm");
    let Some(python) = deploy_python() else {
        return;
    };
    let chart = render_with(&python, values);
    let Source::Helm { invalid, .. } = &chart.source else {
        unreachable!("a chart")
    };
    assert!(invalid.is_empty(), "{invalid:?}");
    assert!(chart.tls, "the README's values set tls.secretName");
    assert_eq!(chart.setting("REQUIRE_TLS").as_deref(), Some("true"));
    let claim = chart.claim_template("data").expect("a claim per pod");
    assert_eq!(claim["spec"]["storageClassName"], "fast-ssd");
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "20Gi");
    assert_eq!(chart.setting("DRAIN_TIMEOUT").as_deref(), Some("60s"));
}

#[test]
fn values_that_would_open_mllp_or_contradict_each_other_are_refused_by_name() {
    let Some(python) = deploy_python() else {
        return;
    };
    // Each: values, and the words the refusal must carry (the value to change).
    let cases: &[(&str, &[&str])] = &[
        (
            // null removes the default selector (Helm merges maps; {} would keep it).
            "networkPolicy:\n  senderNamespaceSelector: null\n",
            &["senderNamespaceSelector", "senderCIDRs"],
        ),
        (
            "service:\n  type: LoadBalancer\n",
            &["loadBalancerSourceRanges"],
        ),
        (
            "tls:\n  clientCASecretName: senders-ca\n",
            &["clientCASecretName", "tls.secretName"],
        ),
        (
            "tls:\n  secretName: mfoundry-tls\nenv:\n  REQUIRE_TLS: false\n",
            &["REQUIRE_TLS", "tls.required"],
        ),
        (
            "extraEnv:\n  - name: DATA_DIR\n    value: /elsewhere\n",
            &["extraEnv", "DATA_DIR"],
        ),
        (
            "extraEnv:\n  - name: RUST_LOG\n    value: debug\n",
            &["extraEnv", "RUST_LOG"],
        ),
        (
            "opentelemetry:\n  endpoint: http://collector:4318\nnetworkPolicy:\n  egress:\n    enabled: true\n",
            &["collector"],
        ),
    ];
    for (values, words) in cases {
        let refused =
            refusal(&python, values).unwrap_or_else(|| panic!("the chart renders with {values:?}"));
        for word in *words {
            assert!(
                refused.contains(word),
                "{values:?}: the refusal does not name {word}: {refused}"
            );
        }
    }

    // Address ranges alone: no namespace peer at all (an empty selector would be every
    // namespace).
    let chart = render_with(
        &python,
        "networkPolicy:\n  senderNamespaceSelector: null\n  adminNamespaceSelector: null\n  senderCIDRs: [10.40.0.0/16]\n",
    );
    let policy = chart.of_kind("NetworkPolicy")[0].clone();
    for rule in policy["spec"]["ingress"].as_array().expect("ingress") {
        for peer in rule["from"].as_array().expect("from") {
            assert!(
                peer["namespaceSelector"].is_null()
                    || peer["namespaceSelector"]["matchLabels"]
                        .as_object()
                        .is_some_and(|labels| !labels.is_empty()),
                "a peer open to every namespace: {peer}"
            );
        }
    }

    // A load balancer is internal, keeps the senders' addresses and takes only its ranges.
    let chart = render_with(
        &python,
        "service:\n  type: LoadBalancer\n  loadBalancerSourceRanges: [10.40.0.0/16]\n",
    );
    let service = chart
        .of_kind("Service")
        .into_iter()
        .find(|service| service["spec"]["type"] == "LoadBalancer")
        .expect("the LoadBalancer");
    assert_eq!(service["spec"]["externalTrafficPolicy"], "Local");
    let annotations = &service["metadata"]["annotations"];
    for (key, value) in [
        (
            "service.beta.kubernetes.io/aws-load-balancer-internal",
            "true",
        ),
        (
            "service.beta.kubernetes.io/azure-load-balancer-internal",
            "true",
        ),
        ("networking.gke.io/load-balancer-type", "Internal"),
    ] {
        assert_eq!(annotations[key], value, "{annotations}");
    }
}
