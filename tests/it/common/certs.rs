//! Test certificates made with the `openssl` command: a CA, a server certificate for
//! localhost/127.0.0.1 and a client certificate, in the given directory (`ca.pem`, `ca.key`,
//! `server.pem`, `server.key`, `client.pem`, `client.key`), valid for two days.

/// Make the test certificates in `directory` with the
/// `openssl` command; `None` (after saying why) when it is not installed.
pub fn certificates(directory: &std::path::Path) -> Option<()> {
    match std::process::Command::new("openssl")
        .arg("version")
        .output()
    {
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
    new_ca(directory, "ca", "/CN=mfoundry test CA");
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
    let (csr, pem) = key_request(directory, name, subject);
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
    new_ca(directory, "other-ca", "/CN=another CA");
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
    let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
    let (csr, pem) = key_request(directory, name, subject);
    openssl(
        directory,
        &[
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
        ],
    );
}

/// A self-signed CA valid two days, as `name`.pem / `name`.key.
fn new_ca(directory: &std::path::Path, name: &str, subject: &str) {
    new_key(directory, name, subject, &["-x509", "-days", "2"], "pem");
}

/// A new P-256 key as `name`.key and a signing request for `subject` as `name`.csr; returns
/// the request's file name and the certificate's (`name`.pem) to write.
fn key_request(directory: &std::path::Path, name: &str, subject: &str) -> (String, String) {
    let csr = new_key(directory, name, subject, &[], "csr");
    (csr, format!("{name}.pem"))
}

/// `openssl req` with a new P-256 key as `name`.key for `subject`, plus `extra` arguments;
/// writes `name`.`extension` and returns that file name.
fn new_key(
    directory: &std::path::Path,
    name: &str,
    subject: &str,
    extra: &[&str],
    extension: &str,
) -> String {
    let (key, out) = (format!("{name}.key"), format!("{name}.{extension}"));
    let mut arguments = vec!["req"];
    arguments.extend_from_slice(extra);
    arguments.extend([
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &out,
        "-subj",
        subject,
    ]);
    openssl(directory, &arguments);
    out
}
