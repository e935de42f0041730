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
    issue(directory, "ca", "server", "/CN=localhost", "server.ext");
    issue(directory, "ca", "client", "/CN=mfoundry", "client.ext");
    Some(())
}

fn openssl(directory: &std::path::Path, args: &[&str]) {
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
}

/// The `openssl ca` database of the test CA (for revocation and back-dated certificates).
fn ca_database(directory: &std::path::Path) {
    if directory.join("ca.cnf").exists() {
        return;
    }
    std::fs::write(
        directory.join("ca.cnf"),
        "[ca]\ndefault_ca=test\n[test]\ndatabase=index.txt\ncrlnumber=crlnumber\n\
         default_md=sha256\ndefault_crl_days=2\nnew_certs_dir=.\nserial=serial\npolicy=any\n\
         unique_subject=no\n[any]\ncommonName=supplied\n",
    )
    .expect("ca.cnf");
    std::fs::write(directory.join("index.txt"), "").expect("index");
    std::fs::write(directory.join("serial"), "1000\n").expect("serial");
    std::fs::write(directory.join("crlnumber"), "01\n").expect("crlnumber");
}

/// A client certificate from the test CA, with subject `subject` and the alternative names
/// `san` (`DNS:lab.example,URI:urn:x`), as `name`.pem / `name`.key.
pub fn client_named(directory: &std::path::Path, name: &str, subject: &str, san: &str) {
    client_named_by(directory, "ca", name, subject, san);
}

/// [`client_named`], signed by the CA `ca` (`ca`.pem / `ca`.key).
pub fn client_named_by(
    directory: &std::path::Path,
    ca: &str,
    name: &str,
    subject: &str,
    san: &str,
) {
    let extensions = format!("{name}.ext");
    std::fs::write(
        directory.join(&extensions),
        format!("extendedKeyUsage=clientAuth\nsubjectAltName={san}\n"),
    )
    .expect("ext");
    issue(directory, ca, name, subject, &extensions);
}

/// A client certificate from the test CA that expired in 2020, as `name`.pem / `name`.key.
pub fn expired_client(directory: &std::path::Path, name: &str) {
    expired(directory, name, "/CN=expired client", "client.ext");
}

/// A server certificate for localhost from the test CA that expired in 2020, as
/// `name`.pem / `name`.key.
pub fn expired_server(directory: &std::path::Path, name: &str) {
    expired(directory, name, "/CN=localhost", "server.ext");
}

fn expired(directory: &std::path::Path, name: &str, subject: &str, extensions: &str) {
    ca_database(directory);
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    openssl(
        directory,
        &[
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
        ],
    );
    openssl(
        directory,
        &[
            "ca",
            "-config",
            "ca.cnf",
            "-batch",
            "-notext",
            "-in",
            &csr,
            "-out",
            &pem,
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200201000000Z",
            "-keyfile",
            "ca.key",
            "-cert",
            "ca.pem",
            "-extfile",
            extensions,
        ],
    );
}

/// A client certificate from the test CA, then revoked: `name`.pem / `name`.key, and the
/// CA's revocation list (listing it) as `crl.pem`.
pub fn revoked_client(directory: &std::path::Path, name: &str) {
    ca_database(directory);
    issue(directory, "ca", name, "/CN=revoked client", "client.ext");
    let pem = format!("{name}.pem");
    openssl(
        directory,
        &[
            "ca", "-config", "ca.cnf", "-revoke", &pem, "-keyfile", "ca.key", "-cert", "ca.pem",
        ],
    );
    revocation_list(directory);
}

/// A revocation list of the test CA that expired in 2020, as `old-crl.pem`.
pub fn expired_revocation_list(directory: &std::path::Path) {
    ca_database(directory);
    openssl(
        directory,
        &[
            "ca",
            "-config",
            "ca.cnf",
            "-gencrl",
            "-keyfile",
            "ca.key",
            "-cert",
            "ca.pem",
            "-out",
            "old-crl.pem",
            "-crl_lastupdate",
            "20200101000000Z",
            "-crl_nextupdate",
            "20200102000000Z",
        ],
    );
}

/// The test CA's revocation list, as `crl.pem` (valid two days).
pub fn revocation_list(directory: &std::path::Path) {
    ca_database(directory);
    openssl(
        directory,
        &[
            "ca", "-config", "ca.cnf", "-gencrl", "-keyfile", "ca.key", "-cert", "ca.pem", "-out",
            "crl.pem",
        ],
    );
}

/// A client certificate from another CA (`other-ca.pem`), which the server does not trust,
/// as `name`.pem / `name`.key.
pub fn untrusted_client(directory: &std::path::Path, name: &str) {
    openssl(
        directory,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "other-ca.key",
            "-out",
            "other-ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=another CA",
        ],
    );
    issue(directory, "other-ca", name, "/CN=mfoundry", "client.ext");
}

/// Another server certificate for localhost from the same CA, as `name`.pem / `name`.key
/// (after [`certificates`] made the CA).
pub fn another_server_certificate(directory: &std::path::Path, name: &str) {
    issue(directory, "ca", name, "/CN=localhost", "server.ext");
}

/// A key and a certificate signed by the CA `ca` (`ca`.pem / `ca`.key), as `name`.key /
/// `name`.pem, with the extensions in `extensions`.
fn issue(directory: &std::path::Path, ca: &str, name: &str, subject: &str, extensions: &str) {
    let run = |args: &[&str]| openssl(directory, args);
    let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
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
        &ca_pem,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        &pem,
        "-days",
        "2",
        "-extfile",
        extensions,
    ]);
}
