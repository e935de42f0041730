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
    let boundary = loop {
        let mut random = [0u8; 16];
        // A failed draw leaves zeros: still checked against the object below.
        let _ = getrandom::fill(&mut random);
        let boundary = format!("mfoundry-{}", data_encoding::HEXLOWER.encode(&random));
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

/// Judge a `202` answer (DICOM JSON) for the object `sop_instance`: `Err` with the failure
/// reason when the answer lists it as failed.
pub fn judge_accepted(answer: &[u8], sop_instance: &str) -> Result<(), String> {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(answer) else {
        // A 202 that says nothing readable: the server took the request.
        return Ok(());
    };
    // The answer is one data set, or (from some servers) a list holding one.
    let set = json
        .as_array()
        .and_then(|list| list.first())
        .unwrap_or(&json);
    let failed = set["00081198"]["Value"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for item in failed {
        let uid = item["00081155"]["Value"][0].as_str().unwrap_or_default();
        if uid == sop_instance || failed_is_only_one(&set["00081198"]) {
            let reason = item["00081197"]["Value"][0]
                .as_u64()
                .map_or_else(|| "no reason given".to_owned(), describe_reason);
            return Err(format!(
                "the server refused the object (202, FailedSOPSequence): {reason}"
            ));
        }
    }
    Ok(())
}

/// A FailedSOPSequence of one item whose UID is missing still names our one object.
fn failed_is_only_one(sequence: &serde_json::Value) -> bool {
    sequence["Value"].as_array().is_some_and(|items| {
        items.len() == 1 && items[0]["00081155"]["Value"][0].as_str().is_none()
    })
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
    fn a_202_fails_only_the_objects_it_lists() {
        let answer = br#"{"00081198": {"vr": "SQ", "Value": [
            {"00081150": {"vr": "UI", "Value": ["1.2.3"]},
             "00081155": {"vr": "UI", "Value": ["1.2.3.4"]},
             "00081197": {"vr": "US", "Value": [49152]}}]},
            "00081199": {"vr": "SQ", "Value": []}}"#;
        let refused = judge_accepted(answer, "1.2.3.4").expect_err("listed as failed");
        assert!(refused.contains("0xC000"), "{refused}");
        assert!(judge_accepted(answer, "9.9.9").is_ok());
        assert!(judge_accepted(b"{}", "1.2.3.4").is_ok());
        assert!(judge_accepted(b"not json", "1.2.3.4").is_ok());
    }
}
