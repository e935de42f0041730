//! Test certificates made with the `openssl` command: a CA, a server certificate for
//! localhost/127.0.0.1 and a client certificate, in the given directory (`ca.pem`, `ca.key`,
//! `server.pem`, `server.key`, `client.pem`, `client.key`), valid for two days.

/// Make the test certificates in `directory` with the
/// `openssl` command; `None` (after saying why) when it is not installed.
pub fn certificates(directory: &std::path::Path) -> Option<()> {
    let run = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(directory)
            .output()
    };
    match run(&["version"]) {
        Ok(output) if output.status.success() => {}
        _ => {
            eprintln!("SKIPPED: the openssl command is needed to make test certificates");
            return None;
        }
    }
    std::fs::write(
        directory.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    std::fs::write(
        directory.join("client.ext"),
        "extendedKeyUsage=clientAuth\n",
    )
    .expect("ext");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let ca = [
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=mfoundry test CA",
        ],
    ]
    .concat();
    let output = run(&ca).expect("openssl runs");
    assert!(
        output.status.success(),
        "openssl {ca:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    issue(directory, "server", "/CN=localhost", "server.ext");
    issue(directory, "client", "/CN=mfoundry", "client.ext");
    Some(())
}

/// Another server certificate for localhost from the same CA, as `name`.pem / `name`.key
/// (after [`certificates`] made the CA).
pub fn another_server_certificate(directory: &std::path::Path, name: &str) {
    issue(directory, name, "/CN=localhost", "server.ext");
}

/// A key and a certificate signed by the test CA, as `name`.key / `name`.pem, with the
/// extensions in `extensions`.
fn issue(directory: &std::path::Path, name: &str, subject: &str, extensions: &str) {
    let run = |args: &[&str]| {
        let output = std::process::Command::new("openssl")
            .args(args)
            .current_dir(directory)
            .output()
            .expect("openssl runs");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &csr,
        "-subj",
        subject,
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        &pem,
        "-days",
        "2",
        "-extfile",
        extensions,
    ]);
}
