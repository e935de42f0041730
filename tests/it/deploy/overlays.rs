//! What only the Kustomize overlays and components must keep: they apply to an empty cluster
//! as documented (their namespace with Pod Security Admission at `restricted`), every object
//! is valid for the oldest supported Kubernetes, and the opt-in components do what
//! docs/deploy.md says.

use super::*;

/// The opt-in components under `deploy/components`.
const COMPONENTS: &[&str] = &[
    "egress",
    "internal-load-balancer",
    "read-write-once",
    "scale-out",
];

/// `overlay` with `component` added, rendered: a kustomization in a scratch directory that
/// names both, as a team's own overlay would (kustomize takes relative paths only).
fn with_component(overlay: &str, component: &str) -> String {
    let directory = tempfile::tempdir().expect("tempdir");
    let scratch = directory.path().canonicalize().expect("canonical");
    let up = "../".repeat(scratch.components().count() - 1);
    let from_root = |path: PathBuf| {
        let path = path.canonicalize().expect("canonical");
        format!("{up}{}", path.display().to_string().trim_start_matches('/'))
    };
    std::fs::write(
        scratch.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\ncomponents:\n  - {}\n",
            from_root(root().join("deploy/overlays").join(overlay)),
            from_root(root().join("deploy/components").join(component))
        ),
    )
    .expect("write");
    kustomize(&scratch)
}

#[test]
fn the_components_are_the_ones_documented() {
    let mut found: Vec<String> = std::fs::read_dir(root().join("deploy/components"))
        .expect("deploy/components")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    found.sort();
    assert_eq!(
        found, COMPONENTS,
        "a component was added or removed: list it here"
    );
    let guide = read("docs/deploy.md");
    for component in COMPONENTS {
        assert!(
            guide.contains(&format!("components/{component}")),
            "docs/deploy.md does not explain components/{component}"
        );
    }
}

#[test]
fn every_overlay_and_component_is_valid_for_the_oldest_supported_kubernetes() {
    let Some(overlays) = overlays() else { return };
    let Some(python) = deploy_python() else {
        return;
    };
    let mut streams: Vec<(String, String)> = overlays
        .iter()
        .map(|overlay| {
            let directory = overlay.name.trim_start_matches("overlay ");
            (
                overlay.name.clone(),
                kustomize(&root().join("deploy/overlays").join(directory)),
            )
        })
        .collect();
    for component in COMPONENTS {
        streams.push((
            format!("overlay prod with components/{component}"),
            with_component("prod", component),
        ));
    }
    for (name, stream) in &streams {
        let answer = kube(
            &python,
            &["validate", OLDEST_KUBERNETES],
            Some(stream.as_bytes()),
        );
        assert_eq!(
            answer["invalid"],
            Value::Array(Vec::new()),
            "{name}: refused by the Kubernetes {OLDEST_KUBERNETES} schemas"
        );
        assert!(
            answer["validated"].as_u64().is_some_and(|count| count >= 8),
            "{name}: {answer}"
        );
    }
}

#[test]
fn every_overlay_creates_its_namespace_with_restricted_pod_security() {
    let Some(overlays) = overlays() else { return };
    for overlay in overlays {
        let name = &overlay.name;
        let namespaces = overlay.of_kind("Namespace");
        assert_eq!(namespaces.len(), 1, "{name}: one Namespace object expected");
        let namespace = namespaces[0];
        let namespace_name = namespace["metadata"]["name"].as_str().expect("a name");
        let labels = &namespace["metadata"]["labels"];
        for mode in ["enforce", "audit", "warn"] {
            assert_eq!(
                labels[format!("pod-security.kubernetes.io/{mode}")],
                "restricted",
                "{name}: the namespace's Pod Security Admission {mode} level"
            );
        }
        for object in &overlay.objects {
            if object["kind"] == "Namespace" {
                continue;
            }
            assert_eq!(
                object["metadata"]["namespace"].as_str(),
                Some(namespace_name),
                "{name}: {} {} is not in the namespace the overlay creates",
                object["kind"],
                object["metadata"]["name"]
            );
        }
    }
}

#[test]
fn the_egress_component_allows_dns_the_collector_and_the_peers_only() {
    let Some(overlays) = overlays() else { return };
    let objects = yaml_documents(&with_component("prod", "egress"), "prod + egress");
    let policy = objects
        .iter()
        .find(|object| {
            object["kind"] == "NetworkPolicy"
                && object["spec"]["policyTypes"]
                    .as_array()
                    .is_some_and(|types| types.iter().any(|kind| kind == "Egress"))
        })
        .expect("a NetworkPolicy with Egress");
    let rules = policy["spec"]["egress"].as_array().expect("egress rules");
    for rule in rules {
        assert!(
            rule["to"].as_array().is_some_and(|to| !to.is_empty())
                && rule["ports"]
                    .as_array()
                    .is_some_and(|ports| !ports.is_empty()),
            "an egress rule open to every destination or port: {rule}"
        );
    }
    // Whether a rule lets the pods reach `namespace` (by its name label) on `port`.
    let reaches = |namespace: &str, port: i64| {
        rules.iter().any(|rule| {
            rule["ports"]
                .as_array()
                .is_some_and(|ports| ports.iter().any(|entry| entry["port"] == port))
                && rule["to"].as_array().is_some_and(|peers| {
                    peers.iter().any(|peer| {
                        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                            == namespace
                    })
                })
        })
    };
    assert!(reaches("kube-system", 53), "DNS is not allowed");
    // The collector of the overlay's OTLP endpoint, and every in-cluster peer of the
    // configuration prod ships: adding the component must not cut a connector off.
    let prod = overlays
        .iter()
        .find(|overlay| overlay.name == "overlay prod")
        .expect("prod");
    let mut destinations: Vec<(String, i64)> = Vec::new();
    if let Some(endpoint) = prod.setting("OTEL_EXPORTER_OTLP_ENDPOINT") {
        let authority = endpoint.split("://").nth(1).unwrap_or(&endpoint);
        let authority = authority.split('/').next().unwrap_or_default();
        let (host, port) = authority.rsplit_once(':').expect("host:port");
        destinations.push((host.to_owned(), port.parse().expect("port")));
    }
    for connector in super::manifests::shipped_connectors(prod) {
        if let (Some(host), Some(port)) = (connector["host"].as_str(), connector["port"].as_i64()) {
            destinations.push((host.to_owned(), port));
        }
        if let Some(url) = connector["url"].as_str() {
            let authority = url.split("://").nth(1).unwrap_or(url);
            let authority = authority.split('/').next().unwrap_or_default();
            let (host, port) = authority.rsplit_once(':').expect("host:port");
            destinations.push((host.to_owned(), port.parse().expect("port")));
        }
    }
    assert!(destinations.len() >= 3, "{destinations:?}");
    for (host, port) in &destinations {
        // <service>.<namespace>.svc(.cluster.local)
        let Some(namespace) = host
            .strip_suffix(".svc.cluster.local")
            .or_else(|| host.strip_suffix(".svc"))
            .and_then(|service| service.rsplit('.').next())
        else {
            continue;
        };
        assert!(
            reaches(namespace, *port),
            "with components/egress, prod can no longer reach {host}:{port}"
        );
    }
}

#[test]
fn the_load_balancer_recipe_is_internal_and_limited_to_source_ranges() {
    if overlays().is_none() {
        return;
    }
    let objects = yaml_documents(
        &with_component("prod", "internal-load-balancer"),
        "prod + internal-load-balancer",
    );
    let service = objects
        .iter()
        .find(|object| object["kind"] == "Service" && object["spec"]["type"] == "LoadBalancer")
        .expect("a LoadBalancer Service");
    assert_eq!(service["spec"]["externalTrafficPolicy"], "Local");
    let ranges = service["spec"]["loadBalancerSourceRanges"]
        .as_array()
        .expect("loadBalancerSourceRanges");
    assert!(!ranges.is_empty());
    for range in ranges {
        let range = range.as_str().expect("a range");
        assert!(!range.ends_with("/0"), "{range} lets everyone in");
    }
    // Internal on every cloud: AWS (both controllers), Azure, Google Cloud.
    let annotations = &service["metadata"]["annotations"];
    for (key, value) in [
        (
            "service.beta.kubernetes.io/aws-load-balancer-internal",
            "true",
        ),
        (
            "service.beta.kubernetes.io/aws-load-balancer-scheme",
            "internal",
        ),
        (
            "service.beta.kubernetes.io/azure-load-balancer-internal",
            "true",
        ),
        ("networking.gke.io/load-balancer-type", "Internal"),
    ] {
        assert_eq!(annotations[key], value, "{annotations}");
    }
    // The same ranges are let through the NetworkPolicy, to the MLLP port only.
    let admitted: Vec<String> = objects
        .iter()
        .filter(|object| object["kind"] == "NetworkPolicy")
        .flat_map(|policy| {
            policy["spec"]["ingress"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|rule| rule["from"].as_array().cloned().unwrap_or_default())
        .filter_map(|peer| peer["ipBlock"]["cidr"].as_str().map(str::to_owned))
        .collect();
    for range in ranges {
        assert!(
            admitted.iter().any(|cidr| range == cidr.as_str()),
            "{range} passes the load balancer but not the NetworkPolicy"
        );
    }
}

#[test]
fn read_write_once_switches_only_the_access_mode_of_the_data_claim() {
    let Some(overlays) = overlays() else { return };
    for overlay in ["prod", "persistent"] {
        let objects = yaml_documents(
            &with_component(overlay, "read-write-once"),
            &format!("{overlay} + read-write-once"),
        );
        let with = objects
            .iter()
            .find(|object| object["kind"] == "StatefulSet")
            .expect("the StatefulSet");
        let without = overlays
            .iter()
            .find(|deployment| deployment.name == format!("overlay {overlay}"))
            .expect("the overlay")
            .workload();
        let claim = |workload: &Value| workload["spec"]["volumeClaimTemplates"][0].clone();
        assert_eq!(
            claim(without)["spec"]["accessModes"],
            serde_json::json!(["ReadWriteOncePod"]),
            "{overlay}"
        );
        assert_eq!(
            claim(with)["spec"]["accessModes"],
            serde_json::json!(["ReadWriteOnce"]),
            "{overlay}"
        );
        assert_eq!(
            claim(with)["spec"]["resources"],
            claim(without)["spec"]["resources"],
            "{overlay}: the size must not change"
        );
    }
}
