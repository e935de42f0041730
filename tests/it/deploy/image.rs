//! The container image: a static binary, run as a non-root user, settings documented.

use super::*;

/// `(name, value)` of every `ENV` instruction of the Dockerfile, in order.
pub(super) fn dockerfile_env(instructions: &[(String, String)]) -> Vec<(String, String)> {
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

/// The Dockerfile's instructions, continuations joined and comments dropped:
/// `(KEYWORD, arguments)`.
pub(super) fn dockerfile_instructions() -> Vec<(String, String)> {
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
    // ARGs before the first FROM may name the base images: `${NAME}` is their default.
    let global_args: BTreeMap<String, String> = instructions[..stages[0]]
        .iter()
        .filter(|(keyword, _)| keyword == "ARG")
        .filter_map(|(_, arguments)| {
            let (name, value) = arguments.split_once('=')?;
            Some((
                name.trim().to_owned(),
                value.trim().trim_matches('"').to_owned(),
            ))
        })
        .collect();
    let resolve = |image: String| match image
        .strip_prefix("${")
        .and_then(|rest| rest.strip_suffix('}'))
    {
        Some(name) => global_args
            .get(name)
            .unwrap_or_else(|| panic!("FROM ${{{name}}} without a default ARG"))
            .clone(),
        None => image,
    };
    let build_image = resolve(image(build[0].1.as_str()));
    let runtime_image = resolve(image(runtime[0].1.as_str()));
    // Reproducible: full names (registry included), an exact tag, and a digest.
    for base in [&build_image, &runtime_image] {
        let (name, digest) = base
            .split_once("@sha256:")
            .unwrap_or_else(|| panic!("{base}: not pinned by digest"));
        assert!(
            digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()),
            "{base}: the digest is not a sha256"
        );
        let registry = name.split('/').next().unwrap_or_default();
        assert!(
            registry.contains('.') && name.matches('/').count() >= 1,
            "{base}: name the registry in full (docker.io/library/..., gcr.io/...)"
        );
        let tag = name
            .rsplit_once(':')
            .map(|(_, tag)| tag)
            .unwrap_or_default();
        assert!(!tag.is_empty() && tag != "latest", "{base}: a floating tag");
    }
    // The Rust release is exact (1.95.0), never `1` or `1.95`.
    let rust_tag = build_image
        .split_once('@')
        .and_then(|(name, _)| name.rsplit_once(':'))
        .map(|(_, tag)| tag)
        .unwrap_or_default();
    let release = rust_tag.split('-').next().unwrap_or_default();
    assert!(
        release.split('.').count() == 3
            && release.split('.').all(|part| part.parse::<u32>().is_ok()),
        "{build_image}: the Rust version must be exact (x.y.z), not {release:?}"
    );
    // OCI labels on the image.
    let labels: String = runtime
        .iter()
        .filter(|(keyword, _)| keyword == "LABEL")
        .map(|(_, arguments)| arguments.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    for key in ["title", "description", "version", "licenses"] {
        assert!(
            labels.contains(&format!("org.opencontainers.image.{key}=")),
            "the image has no org.opencontainers.image.{key} label: {labels}"
        );
    }
    assert!(
        read("Dockerfile").contains(&format!("ARG VERSION={}", env!("CARGO_PKG_VERSION"))),
        "the image's default version label is not Cargo.toml's version"
    );
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
