//! What only the Kustomize overlays and components must keep: they apply to an empty cluster
//! as documented (their namespace with Pod Security Admission at `restricted`), every object
//! is valid for the oldest supported Kubernetes, and the opt-in components do what
//! docs/deploy.md says.

use super::*;

/// The opt-in components under `deploy/components`.
const COMPONENTS: &[&str] = &["egress", "internal-load-balancer", "scale-out"];

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
    if overlays().is_none() {
        return;
    }
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
    let ports: Vec<i64> = rules
        .iter()
        .flat_map(|rule| rule["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|port| port["port"].as_i64())
        .collect();
    assert!(ports.contains(&53), "DNS is not allowed: {ports:?}");
    assert!(
        ports.contains(&4318),
        "the collector is not allowed: {ports:?}"
    );
    for rule in rules {
        assert!(
            rule["to"].as_array().is_some_and(|to| !to.is_empty())
                && rule["ports"]
                    .as_array()
                    .is_some_and(|ports| !ports.is_empty()),
            "an egress rule open to every destination or port: {rule}"
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
    let annotations = service["metadata"]["annotations"]
        .as_object()
        .expect("annotations");
    assert!(
        annotations
            .values()
            .any(|value| value == "internal" || value == "true" || value == "Internal"),
        "no internal load balancer annotation: {annotations:?}"
    );
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
