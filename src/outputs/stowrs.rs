//! `type: stowrs`: DICOMweb STOW-RS (PS3.18 §10.5). Each stored DICOM object is POSTed to
//! `{url}/studies` as `multipart/related; type="application/dicom"` (one part: the object's
//! Part 10 bytes as received), with the HTTP output's authentication, TLS, timeout and
//! egress rules ([`super::http`]).
//!
//! - `200` is delivered;
//! - `202` (some instances failed or had warnings) is read: the object is delivered when its
//!   SOP Instance UID is not in the answer's FailedSOPSequence (0008,1198), and goes to the
//!   dead-letter queue with the FailureReason (0008,1197) when it is;
//! - `408`, `429` and `5xx`, connection errors and timeouts are retried (`Retry-After`
//!   honoured); every other status (`400`, `409` conflict, `415` …) goes to the dead-letter
//!   queue.

use bytes::{BufMut, Bytes, BytesMut};

use super::http::{HttpSpec, TokenSource};

/// The keys a STOW-RS connector takes.
pub const KEYS: [&str; 8] = [
    "url",
    "headers",
    "bearer_token_env",
    "bearer_token_file",
    "timeout",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
];

/// Read a STOW-RS connector's keys (an HTTP spec posting to `{url}/studies`); `None` when a
/// problem was recorded.
pub fn read(reader: &mut super::settings::Reader<'_, '_>) -> Option<HttpSpec> {
    let problems_before = reader.problems.len();
    reader.require(
        "url",
        "for type stowrs (the DICOMweb base, e.g. https://pacs/dicom-web)",
    );
    let url = reader.text("url").unwrap_or_default();
    if reader.has("url") && !(url.starts_with("http://") || url.starts_with("https://")) {
        reader.problem("url", "`url` must start with http:// or https://");
    }
    let headers = reader.text_map("headers");
    let token = match (
        reader.raw_text("bearer_token_env"),
        reader.text("bearer_token_file"),
    ) {
        (Some(_), Some(_)) => {
            reader.problem(
                "bearer_token_file",
                "set `bearer_token_env` or `bearer_token_file`, not both",
            );
            None
        }
        (Some(name), None) => Some(TokenSource::Env(name)),
        (None, Some(path)) => Some(TokenSource::File(std::path::PathBuf::from(path))),
        (None, None) => None,
    };
    if let Some(TokenSource::Env(name)) = &token
        && (reader.lookup)(name).is_none()
    {
        reader.problem(
            "bearer_token_env",
            format!("`bearer_token_env` names {name}, which is not set in the environment"),
        );
    }
    let timeout = reader.duration("timeout", std::time::Duration::from_secs(60));
    let files = reader.tls_files();
    let tls = reader.tls_client(files.as_ref(), None);
    (reader.problems.len() == problems_before).then_some(HttpSpec {
        url: format!("{}/studies", url.trim_end_matches('/')),
        method: "POST".to_owned(),
        headers,
        token,
        format: super::format::Format::Hl7,
        timeout,
        tls,
        egress: None,
        stow: true,
    })
}

/// A multipart/related body holding `object` as its one `application/dicom` part, and its
/// Content-Type (the boundary is random and checked not to occur in the object).
pub fn multipart(object: &[u8]) -> (String, Bytes) {
    let mut attempt = 0u64;
    let boundary = loop {
        let mut random = [0u8; 16];
        // A failed draw leaves zeros; the attempt number still makes each try another.
        let _ = getrandom::fill(&mut random);
        attempt += 1;
        let boundary = format!(
            "mfoundry-{}-{attempt}",
            data_encoding::HEXLOWER.encode(&random)
        );
        if memchr::memmem::find(object, boundary.as_bytes()).is_none() {
            break boundary;
        }
    };
    let mut body = BytesMut::with_capacity(object.len() + 128);
    body.put_slice(format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes());
    body.put_slice(object);
    body.put_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (
        format!("multipart/related; type=\"application/dicom\"; boundary={boundary}"),
        body.freeze(),
    )
}

/// What a STOW-RS answer means for the one object a request carries.
#[derive(Debug, PartialEq, Eq)]
pub enum Judged {
    /// The server holds it.
    Stored,
    /// Worth trying again (out of resources, busy, still being stored by an earlier try).
    Retry(String),
    /// Refused.
    Refused(String),
}

/// FailureReason codes of instances that are already stored: `0x0111` (duplicate SOP
/// instance) and 45070 (0xB00E, "already stored", some cloud archives).
const ALREADY_STORED: [u64; 2] = [0x0111, 45070];
/// Codes worth retrying: `0xA7xx` (out of resources), `0x0213` (resource limitation), 45071
/// (0xB00F, "being stored by another process": an earlier attempt still in flight).
fn transient(code: u64) -> bool {
    (0xA700..=0xA7FF).contains(&code) || code == 0x0213 || code == 45071
}

/// Judge the answer `status` and `answer` (its body, DICOM JSON) to a request that carried
/// one object. A request carries one instance, so any FailedSOPSequence item is that one.
pub fn judge(status: u16, answer: &[u8]) -> Judged {
    let json = serde_json::from_slice::<serde_json::Value>(answer).ok();
    // The answer is one data set, or (from some servers) a list holding one.
    let set = json.as_ref().map(|json| {
        json.as_array()
            .and_then(|list| list.first())
            .unwrap_or(json)
    });
    let failed = set
        .and_then(|set| set["00081198"]["Value"].as_array())
        .and_then(|items| items.first())
        .map(|item| item["00081197"]["Value"][0].as_u64());
    let referenced = set
        .and_then(|set| set["00081199"]["Value"].as_array())
        .is_some_and(|items| !items.is_empty());
    match failed {
        Some(Some(code)) if ALREADY_STORED.contains(&code) => Judged::Stored,
        Some(Some(code)) if transient(code) => Judged::Retry(format!(
            "the server could not store the object now (HTTP {status}, FailureReason {})",
            describe_reason(code)
        )),
        Some(code) => Judged::Refused(format!(
            "the server refused the object (HTTP {status}, FailedSOPSequence, FailureReason {})",
            code.map_or_else(|| "not given".to_owned(), describe_reason)
        )),
        None => match status {
            200 if set.is_some() && !referenced => Judged::Refused(
                "the server answered 200 but lists the object in neither ReferencedSOPSequence nor FailedSOPSequence: not stored"
                    .to_owned(),
            ),
            // A 200 with no readable answer: taken as the standard says, stored.
            200..=201 => Judged::Stored,
            202 if referenced => Judged::Stored,
            202 => Judged::Retry(
                "the server answered 202 without a readable list of what it stored".to_owned(),
            ),
            409 => Judged::Refused("the server answered HTTP 409 (conflict)".to_owned()),
            other => Judged::Refused(format!("the server answered HTTP {other}")),
        },
    }
}

/// A FailureReason code in words (PS3.18 Table 10.5.3-1 / PS3.4 C-STORE statuses).
fn describe_reason(code: u64) -> String {
    let text = match code {
        0xA700..=0xA7FF => "out of resources",
        0xA900..=0xA9FF => "data set does not match SOP class",
        0xC122 => "referenced transfer syntax not supported",
        0xC000..=0xCFFF => "cannot understand",
        0x0110 => "processing failure",
        0x0122 => "SOP class not supported",
        0x0111 => "duplicate SOP instance",
        0x0124 => "refused: not authorized",
        _ => "failure",
    };
    format!("0x{code:04X} ({text})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_one_dicom_part_between_boundaries() {
        let object = b"\0\0DICM object bytes";
        let (content_type, body) = multipart(object);
        let boundary = content_type.split("boundary=").nth(1).expect("a boundary");
        assert!(content_type.starts_with("multipart/related; type=\"application/dicom\""));
        let text = body.as_ref();
        assert!(text.starts_with(format!("--{boundary}\r\n").as_bytes()));
        assert!(text.ends_with(format!("\r\n--{boundary}--\r\n").as_bytes()));
        assert!(memchr::memmem::find(text, object).is_some());
    }

    #[test]
    fn answers_are_judged_by_their_failure_reasons() {
        let failed = |code: u64| {
            format!(
                r#"{{"00081198": {{"vr": "SQ", "Value": [
                {{"00081155": {{"vr": "UI", "Value": ["1.2.3.4"]}},
                 "00081197": {{"vr": "US", "Value": [{code}]}}}}]}}}}"#
            )
        };
        let stored = br#"{"00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.2.3.4"]}}]}}"#;
        assert_eq!(judge(200, stored), Judged::Stored);
        assert_eq!(judge(202, stored), Judged::Stored);
        assert_eq!(judge(200, b""), Judged::Stored);
        assert!(
            matches!(judge(200, b"{}"), Judged::Refused(_)),
            "200 listing nothing"
        );
        assert!(matches!(judge(202, b"not json"), Judged::Retry(_)));
        let refused = judge(202, failed(0xC000).as_bytes());
        assert!(
            matches!(&refused, Judged::Refused(reason) if reason.contains("0xC000")),
            "{refused:?}"
        );
        assert!(matches!(
            judge(400, failed(0xA700).as_bytes()),
            Judged::Retry(_)
        ));
        assert!(matches!(
            judge(409, failed(45071).as_bytes()),
            Judged::Retry(_)
        ));
        assert_eq!(judge(409, failed(45070).as_bytes()), Judged::Stored);
        assert_eq!(judge(409, failed(0x0111).as_bytes()), Judged::Stored);
        assert!(matches!(judge(409, b""), Judged::Refused(_)));
        assert!(matches!(judge(400, b"bad"), Judged::Refused(_)));
    }
}
