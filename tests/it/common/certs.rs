//! Test certificates made in-process with `rcgen`: a CA, a server certificate for
//! localhost/127.0.0.1 and a client certificate, in the given directory (`ca.pem`, `ca.key`,
//! `server.pem`, `server.key`, `client.pem`, `client.key`), valid from an hour ago to two
//! days from now. Everything a later call needs (the CA's key and certificate, the serials it revoked)
//! is read back from the directory, so a CA copied elsewhere keeps working.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use std::path::Path;

/// The window a certificate or revocation list is valid in.
type Validity = (time::OffsetDateTime, time::OffsetDateTime);

/// Which end of a connection a leaf certificate is for.
#[derive(Clone, Copy)]
enum Role {
    Server,
    Client,
}

/// Make the test CA, the server certificate and the client certificate in `directory`.
pub fn certificates(directory: &Path) {
    new_ca(directory, "ca", "/CN=mfoundry test CA");
    issue(
        directory,
        "ca",
        "server",
        "/CN=localhost",
        SERVER_NAMES,
        Role::Server,
        current(),
    );
    issue(
        directory,
        "ca",
        "client",
        "/CN=mfoundry",
        "",
        Role::Client,
        current(),
    );
}

const SERVER_NAMES: &str = "DNS:localhost,IP:127.0.0.1";

/// A client certificate from the test CA, with subject `subject` (`/CN=lab/O=North`) and the
/// alternative names `san` (`DNS:lab.example,URI:urn:x`), as `name`.pem / `name`.key.
pub fn client_named(directory: &Path, name: &str, subject: &str, san: &str) {
    client_named_by(directory, "ca", name, subject, san);
}

/// [`client_named`], signed by the CA `ca` (`ca`.pem / `ca`.key).
pub fn client_named_by(directory: &Path, ca: &str, name: &str, subject: &str, san: &str) {
    issue(directory, ca, name, subject, san, Role::Client, current());
}

/// A client certificate from the test CA that expired in 2020, as `name`.pem / `name`.key.
pub fn expired_client(directory: &Path, name: &str) {
    let subject = "/CN=expired client";
    issue(directory, "ca", name, subject, "", Role::Client, in_2020());
}

/// A server certificate for localhost from the test CA that expired in 2020, as
/// `name`.pem / `name`.key.
pub fn expired_server(directory: &Path, name: &str) {
    let subject = "/CN=localhost";
    issue(
        directory,
        "ca",
        name,
        subject,
        SERVER_NAMES,
        Role::Server,
        in_2020(),
    );
}

/// A client certificate from the test CA, then revoked: `name`.pem / `name`.key, and the
/// CA's revocation list (listing it) as `crl.pem`.
pub fn revoked_client(directory: &Path, name: &str) {
    let serial = issue(
        directory,
        "ca",
        name,
        "/CN=revoked client",
        "",
        Role::Client,
        current(),
    );
    let revoked = directory.join("ca.revoked");
    let mut list = std::fs::read_to_string(&revoked).unwrap_or_default();
    list.push_str(&hex(&serial));
    list.push('\n');
    std::fs::write(&revoked, list).expect("write the revoked serials");
    revocation_list(directory);
}

/// A revocation list of the test CA that expired in 2020, as `old-crl.pem`.
pub fn expired_revocation_list(directory: &Path) {
    write_revocation_list(directory, "old-crl.pem", in_2020());
}

/// The test CA's revocation list, listing what [`revoked_client`] revoked, as `crl.pem`.
pub fn revocation_list(directory: &Path) {
    write_revocation_list(directory, "crl.pem", current());
}

/// A client certificate from another CA (`other-ca.pem`), which the server does not trust,
/// as `name`.pem / `name`.key.
pub fn untrusted_client(directory: &Path, name: &str) {
    new_ca(directory, "other-ca", "/CN=another CA");
    issue(
        directory,
        "other-ca",
        name,
        "/CN=mfoundry",
        "",
        Role::Client,
        current(),
    );
}

/// Another server certificate for localhost from the same CA, as `name`.pem / `name`.key
/// (after [`certificates`] made the CA).
pub fn another_server_certificate(directory: &Path, name: &str) {
    issue(
        directory,
        "ca",
        name,
        "/CN=localhost",
        SERVER_NAMES,
        Role::Server,
        current(),
    );
}

/// A self-signed CA, as `name`.pem / `name`.key.
fn new_ca(directory: &Path, name: &str, subject: &str) {
    let key = KeyPair::generate().expect("generate a key");
    let mut params = params(subject, "", current());
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let certificate = params.self_signed(&key).expect("self-sign the CA");
    write(directory, name, &certificate.pem(), &key);
}

/// A key and a certificate signed by the CA `ca` (`ca`.pem / `ca`.key), as `name`.key /
/// `name`.pem; returns the certificate's serial number.
fn issue(
    directory: &Path,
    ca: &str,
    name: &str,
    subject: &str,
    san: &str,
    role: Role,
    validity: Validity,
) -> Vec<u8> {
    let key = KeyPair::generate().expect("generate a key");
    let mut params = params(subject, san, validity);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![match role {
        Role::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Role::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    params.use_authority_key_identifier_extension = true;
    let serial = new_serial();
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let certificate = params
        .signed_by(&key, &issuer(directory, ca))
        .expect("sign the certificate");
    write(directory, name, &certificate.pem(), &key);
    serial
}

fn write_revocation_list(directory: &Path, file: &str, (this_update, next_update): Validity) {
    let revoked = std::fs::read_to_string(directory.join("ca.revoked")).unwrap_or_default();
    let revoked_certs = revoked
        .lines()
        .map(|serial| RevokedCertParams {
            serial_number: SerialNumber::from_slice(&unhex(serial)),
            revocation_time: this_update,
            reason_code: None,
            invalidity_date: None,
        })
        .collect();
    let list = CertificateRevocationListParams {
        this_update,
        next_update,
        crl_number: SerialNumber::from(u64::try_from(this_update.unix_timestamp()).unwrap_or(1)),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&issuer(directory, "ca"))
    .expect("sign the revocation list");
    let pem = list.pem().expect("revocation list PEM");
    std::fs::write(directory.join(file), pem).expect("write the revocation list");
}

/// The CA `ca` as an issuer, from its certificate and key in `directory`.
fn issuer(directory: &Path, ca: &str) -> Issuer<'static, KeyPair> {
    let read = |extension: &str| {
        std::fs::read_to_string(directory.join(format!("{ca}.{extension}")))
            .unwrap_or_else(|error| panic!("read {ca}.{extension}: {error}"))
    };
    let key = KeyPair::from_pem(&read("key")).expect("the CA's key");
    Issuer::from_ca_cert_pem(&read("pem"), key).expect("the CA's certificate")
}

/// Certificate parameters for `subject` (`/CN=x/O=y`) with the alternative names `san`
/// (`DNS:a,IP:1.2.3.4,URI:urn:x`), valid in `validity`.
fn params(subject: &str, san: &str, (not_before, not_after): Validity) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.not_before = not_before;
    params.not_after = not_after;
    let mut name = DistinguishedName::new();
    for part in subject.split('/').filter(|part| !part.is_empty()) {
        let (kind, value) = part.split_once('=').expect("subject parts are KIND=value");
        let kind = match kind {
            "CN" => DnType::CommonName,
            "O" => DnType::OrganizationName,
            "OU" => DnType::OrganizationalUnitName,
            "C" => DnType::CountryName,
            other => panic!("subject part {other} is not one the tests use"),
        };
        name.push(kind, value);
    }
    params.distinguished_name = name;
    params.subject_alt_names = san
        .split(',')
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (kind, value) = entry.split_once(':').expect("names are KIND:value");
            let text = || value.to_owned().try_into().expect("an IA5 name");
            match kind {
                "DNS" => SanType::DnsName(text()),
                "URI" => SanType::URI(text()),
                "email" => SanType::Rfc822Name(text()),
                "IP" => SanType::IpAddress(value.parse().expect("an IP address")),
                other => panic!("alternative name kind {other} is not one the tests use"),
            }
        })
        .collect();
    params
}

fn write(directory: &Path, name: &str, certificate: &str, key: &KeyPair) {
    std::fs::write(directory.join(format!("{name}.pem")), certificate).expect("write cert");
    std::fs::write(directory.join(format!("{name}.key")), key.serialize_pem()).expect("key");
}

/// An hour ago (absorbing clock differences) to two days from now.
fn current() -> Validity {
    let now = time::OffsetDateTime::now_utc();
    (
        now - time::Duration::hours(1),
        now + time::Duration::days(2),
    )
}

/// January 2020: long expired.
fn in_2020() -> Validity {
    (
        rcgen::date_time_ymd(2020, 1, 1),
        rcgen::date_time_ymd(2020, 2, 1),
    )
}

/// A positive serial number no other test certificate shares.
fn new_serial() -> Vec<u8> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    let mut serial = vec![0x01];
    serial.extend_from_slice(&(nanos as u64).to_be_bytes());
    serial.extend_from_slice(&count.to_be_bytes());
    serial
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).expect("hex serial"))
        .collect()
}
