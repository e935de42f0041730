//! What every rendered deployment (each Kustomize overlay, the Helm chart with each values
//! example) must keep: the promises of docs/deploy.md.

use super::image::{dockerfile_env, dockerfile_instructions};
use super::*;

#[test]
fn every_environment_variable_in_deploy_and_the_dockerfile_is_documented() {
    let documented = documented_variables();

    // The sources: the base, the overlays and their patches (the chart's templates are
    // checked as rendered, below).
    let files = plain_yaml_files();
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
    for deployment in rendered() {
        let env = deployment.container()["env"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: the container has no env", deployment.name));
        let mut defined = BTreeSet::new();
        let mut used = BTreeSet::new();
        for entry in env {
            let name = entry["name"].as_str().expect("a name");
            assert!(
                documented.contains(name) || is_field_helper(entry),
                "{}: {name} is not in docs/configuration.md",
                deployment.name
            );
            if let Some(value) = entry["value"].as_str() {
                for reference in references(value) {
                    assert!(
                        defined.contains(&reference),
                        "{}: {name} uses $({reference}) before it is defined (Kubernetes would leave it unexpanded)",
                        deployment.name
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
                deployment.name
            );
        }
    }
}

#[test]
fn every_deployment_renders_a_statefulset_with_probes_and_a_locked_down_pod() {
    for deployment in rendered() {
        let name = &deployment.name;
        let pod = deployment.pod();
        let container = deployment.container();

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
        let admin_address = deployment.effective("ADMIN_ADDR");
        let (admin_host, admin_port) = parse_listen_address(&admin_address)
            .unwrap_or_else(|error| panic!("{name}: ADMIN_ADDR={admin_address:?}: {error}"));
        assert!(
            admin_host.is_none_or(|host| host == "0.0.0.0" || host == "::"),
            "{name}: ADMIN_ADDR={admin_address:?} is not reachable by the kubelet's probes"
        );
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            assert_eq!(
                deployment.container_port(&container[probe]["httpGet"]["port"]),
                Some(i64::from(admin_port)),
                "{name}: {probe} does not reach ADMIN_ADDR={admin_address}"
            );
        }
        let listen_address = deployment.effective("LISTEN_ADDR");
        assert_eq!(
            deployment.container_port(&Value::from(MLLP_PORT_NAME)),
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

        // The other objects a deployment must carry.
        for kind in [
            "ConfigMap",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "ServiceAccount",
        ] {
            assert!(!deployment.of_kind(kind).is_empty(), "{name}: no {kind}");
        }
    }
}

#[test]
fn the_grace_period_covers_the_pre_stop_pause_and_the_drain() {
    for deployment in rendered() {
        let name = &deployment.name;
        let container = deployment.container();
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
        let drain_text = deployment.effective("DRAIN_TIMEOUT");
        let drain = parse_duration(&drain_text)
            .unwrap_or_else(|error| panic!("{name}: DRAIN_TIMEOUT={drain_text}: {error}"));
        // Kubernetes' default grace period is 30 s.
        let grace = deployment.pod()["terminationGracePeriodSeconds"]
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
    for deployment in rendered() {
        let name = &deployment.name;
        let data_dir = deployment.effective("DATA_DIR");
        assert!(
            data_dir.starts_with('/'),
            "{name}: DATA_DIR={data_dir} must be an absolute path in a pod"
        );
        let mount = deployment.mount_holding(&data_dir).unwrap_or_else(|| {
            panic!("{name}: nothing is mounted at DATA_DIR={data_dir} (the root filesystem is read-only)")
        });
        assert_ne!(mount["readOnly"], true, "{name}: DATA_DIR is read-only");
        let volume_name = mount["name"].as_str().expect("a volume name");
        if deployment.durable {
            let claim = deployment.claim_template(volume_name).unwrap_or_else(|| {
                panic!("{name}: DATA_DIR must be on a volumeClaimTemplate (a volume per pod), found {:?}", deployment.volume(volume_name))
            });
            assert!(
                deployment.volume(volume_name).is_none(),
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
                deployment.workload()["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"],
                "Delete",
                "{name}"
            );
        } else {
            let volume = deployment
                .volume(volume_name)
                .unwrap_or_else(|| panic!("{name}: no volume {volume_name}"));
            assert!(
                volume["emptyDir"].is_object(),
                "{name}: DATA_DIR on {volume}"
            );
        }
        // Every mount has its volume.
        for mount in deployment.container()["volumeMounts"]
            .as_array()
            .expect("mounts")
        {
            let volume = mount["name"].as_str().expect("a name");
            assert!(
                deployment.volume(volume).is_some() || deployment.claim_template(volume).is_some(),
                "{name}: the mount {mount} has no volume"
            );
        }
    }
}

#[test]
fn files_named_by_settings_are_mounted_and_tls_comes_from_a_secret_in_prod() {
    for deployment in rendered() {
        let name = &deployment.name;
        for setting in FILE_SETTINGS {
            let Some(path) = deployment.setting(setting).filter(|path| !path.is_empty()) else {
                continue;
            };
            let mount = deployment
                .mount_holding(&path)
                .unwrap_or_else(|| panic!("{name}: {setting}={path} is not in a mounted volume"));
            // subPath mounts never see updates: a renewed certificate would never arrive.
            assert!(
                mount["subPath"].is_null() && mount["subPathExpr"].is_null(),
                "{name}: {setting} is mounted with a subPath"
            );
            let volume_name = mount["name"].as_str().expect("a name");
            let volume = deployment
                .volume(volume_name)
                .unwrap_or_else(|| panic!("{name}: no volume {volume_name}"));
            if setting.starts_with("TLS_")
                || *setting == "ADMIN_TOKENS_FILE"
                || *setting == "ENCRYPTION_KEY_FILE"
            {
                assert!(
                    volume["secret"].is_object() || volume["projected"].is_object(),
                    "{name}: {setting} must come from a Secret, not {volume}"
                );
            }
        }
        if deployment.tls {
            for setting in ["TLS_CERT_FILE", "TLS_KEY_FILE"] {
                assert!(
                    deployment
                        .setting(setting)
                        .is_some_and(|path| !path.is_empty()),
                    "{name}: {setting} is not set"
                );
            }
            assert_eq!(
                deployment.setting("REQUIRE_TLS").as_deref(),
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
    for deployment in rendered() {
        let name = &deployment.name;
        let config_file = deployment
            .setting("CONFIG_FILE")
            .unwrap_or_else(|| panic!("{name}: CONFIG_FILE is not set"));
        let mount = deployment
            .mount_holding(&config_file)
            .unwrap_or_else(|| panic!("{name}: CONFIG_FILE={config_file} is not mounted"));
        let volume = deployment
            .volume(mount["name"].as_str().expect("a name"))
            .expect("the mount's volume");
        let map_name = volume["configMap"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: CONFIG_FILE is not from a ConfigMap: {volume}"));
        let config_map = deployment
            .of_kind("ConfigMap")
            .into_iter()
            .find(|object| object["metadata"]["name"] == map_name)
            .unwrap_or_else(|| panic!("{name}: the ConfigMap {map_name} is not rendered"));
        match &deployment.source {
            // kustomize appends a hash of the content: a new name changes the pod template.
            Source::Kustomize => {
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
            }
            // Helm keeps the name: the pod template carries the content's checksum instead.
            Source::Helm { .. } => {
                use sha2::Digest as _;
                let content: String = config_map["data"]
                    .as_object()
                    .expect("data")
                    .values()
                    .filter_map(Value::as_str)
                    .collect();
                let digest = sha2::Sha256::digest(content.as_bytes());
                let expected: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
                assert_eq!(
                    deployment.workload()["spec"]["template"]["metadata"]["annotations"]["checksum/config"],
                    expected.as_str(),
                    "{name}: the pod template's checksum/config is not the configuration's"
                );
            }
        }
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
    for deployment in rendered() {
        let name = &deployment.name;
        let labels = deployment.pod_labels();
        let workload = deployment.workload();
        assert!(
            selects(&workload["spec"]["selector"]["matchLabels"], labels),
            "{name}: the StatefulSet's selector"
        );
        let mllp_port = deployment
            .container_port(&Value::from(MLLP_PORT_NAME))
            .expect("an mllp port");
        let admin_port = i64::from(port_of(&deployment.effective("ADMIN_ADDR")));

        let services = deployment.of_kind("Service");
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
                        ports.iter().any(|entry| {
                            deployment.container_port(&entry["targetPort"]) == Some(port)
                        })
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
        let policies = deployment.of_kind("NetworkPolicy");
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
                    .any(|entry| deployment.container_port(&entry["port"]) == Some(mllp_port)),
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
                // An address range chosen for senders outside the cluster, never "anyone".
                let cidr = peer["ipBlock"]["cidr"].as_str();
                let chosen_range = cidr.is_some_and(|cidr| {
                    !cidr.ends_with("/0") && selector.is_null() && peer["podSelector"].is_null()
                });
                assert!(
                    (labelled && peer["ipBlock"].is_null()) || chosen_range,
                    "{name}: MLLP must come only from labelled namespaces or chosen address ranges: {peer}"
                );
            }
        }
        assert!(mllp_rules > 0, "{name}: the NetworkPolicy lets no MLLP in");

        let budgets = deployment.of_kind("PodDisruptionBudget");
        assert!(
            budgets
                .iter()
                .any(|budget| selects(&budget["spec"]["selector"]["matchLabels"], labels)),
            "{name}: no PodDisruptionBudget selects the gateway"
        );
    }
}

#[test]
fn the_deploy_configuration_passes_check_with_each_deployments_environment() {
    let directory = tempfile::tempdir().expect("tempdir");
    let data_dir = directory.path().join("data");

    // Every mfoundry configuration file under deploy/, as written.
    let files = plain_yaml_files();
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

    // As each deployment ships it: the ConfigMap's file with the container's settings (files
    // that only exist in the pod, and DATA_DIR, left out).
    for deployment in rendered() {
        let config_file = deployment.setting("CONFIG_FILE").expect("CONFIG_FILE");
        let file_name = config_file.rsplit('/').next().expect("a file name");
        let content = deployment
            .of_kind("ConfigMap")
            .into_iter()
            .find_map(|map| map["data"][file_name].as_str())
            .unwrap_or_else(|| panic!("{}: no ConfigMap holds {file_name}", deployment.name));
        let path = directory
            .path()
            .join(format!("{}-{file_name}", deployment.name.replace(' ', "-")));
        std::fs::write(&path, content).expect("write");
        let envs: Vec<(String, String)> = ENV_VARS
            .iter()
            .filter(|var| !FILE_SETTINGS.contains(&var.name) && var.name != "DATA_DIR")
            .filter_map(|var| {
                deployment
                    .setting(var.name)
                    .map(|value| (var.name.to_owned(), value))
            })
            .collect();
        assert!(
            envs.iter().any(|(name, _)| name == "ADMIN_ADDR"),
            "{}: {envs:?}",
            deployment.name
        );
        assert_checks(
            &check(&path, &envs, &data_dir),
            &format!("{} with {envs:?}", deployment.name),
        );
    }
}

/// The connectors of the configuration a deployment ships (its ConfigMap's file).
pub(super) fn shipped_connectors(deployment: &Deployment) -> Vec<Value> {
    let config_file = deployment.setting("CONFIG_FILE").expect("CONFIG_FILE");
    let file_name = config_file.rsplit('/').next().expect("a file name");
    let content = deployment
        .of_kind("ConfigMap")
        .into_iter()
        .find_map(|map| map["data"][file_name].as_str())
        .unwrap_or_else(|| panic!("{}: no ConfigMap holds {file_name}", deployment.name));
    yaml_documents(content, &deployment.name)
        .pop()
        .and_then(|config| config["connectors"].as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn several_pods_spread_over_nodes_and_feed_no_ordered_interface() {
    for deployment in rendered() {
        let name = &deployment.name;
        let replicas = deployment.workload()["spec"]["replicas"]
            .as_i64()
            .unwrap_or(1);
        if replicas < 2 {
            continue;
        }
        // Each pod delivers only what it received: an MLLP interface (an EHR's ADT feed)
        // applies a stream in order, so two pods must not feed one (docs/deploy.md).
        for connector in shipped_connectors(deployment) {
            assert_ne!(
                connector["type"], "mllp",
                "{name}: {replicas} pods feed the ordered MLLP interface {}",
                connector["name"]
            );
        }
        let spread = deployment.pod()["topologySpreadConstraints"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            spread.iter().any(|constraint| {
                constraint["topologyKey"] == "kubernetes.io/hostname"
                    && constraint["whenUnsatisfiable"] == "DoNotSchedule"
                    && constraint["maxSkew"] == 1
                    && selects(
                        &constraint["labelSelector"]["matchLabels"],
                        deployment.pod_labels(),
                    )
            }),
            "{name}: {replicas} pods may land on one node: {spread:?}"
        );
    }
}

/// Bytes of a Kubernetes quantity (`512Mi`, `2Gi`, `1G`, `1000`).
fn quantity_bytes(quantity: &str) -> u64 {
    let units: &[(&str, u64)] = &[
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(number) = quantity.strip_suffix(suffix) {
            return number.parse::<u64>().expect("a whole number") * factor;
        }
    }
    quantity.parse().expect("a whole number of bytes")
}

/// What mfoundry itself needs beside received frames: the runtime, the store's cache, the
/// rules (docs/deploy.md, "Memory").
const BASE_MEMORY: u64 = 128 << 20;

#[test]
fn the_memory_limit_covers_the_frames_being_received() {
    use mfoundry::units::parse_size;
    for deployment in rendered() {
        let name = &deployment.name;
        let limit = deployment.container()["resources"]["limits"]["memory"]
            .as_str()
            .map(quantity_bytes)
            .unwrap_or_else(|| panic!("{name}: no memory limit"));
        let connections: u64 = deployment
            .effective("MAX_CONNECTIONS")
            .parse()
            .expect("MAX_CONNECTIONS");
        let frame = parse_size(&deployment.effective("MAX_FRAME_SIZE")).expect("MAX_FRAME_SIZE");
        // MAX_FRAME_MEMORY unset: 256 MiB, or four frames when that is more.
        let budget = deployment.setting("MAX_FRAME_MEMORY").map_or_else(
            || (256 << 20).max(4 * frame),
            |value| parse_size(&value).expect("MAX_FRAME_MEMORY"),
        );
        // Received frames take at most the budget plus 64 KiB per connection
        // (docs/configuration.md, MAX_FRAME_MEMORY).
        let frames = budget + connections * (64 << 10);
        assert!(
            limit >= frames + BASE_MEMORY,
            "{name}: memory limit {} MiB < {} MiB of frames (MAX_FRAME_MEMORY + {connections} x 64 KiB) + {} MiB",
            limit >> 20,
            frames >> 20,
            BASE_MEMORY >> 20
        );
    }
}
