//! Helpers shared by the integration tests: start the app on 127.0.0.1:0, speak raw MLLP.

#![allow(dead_code)] // Each test crate uses a different subset of these helpers.

use std::sync::Arc;
use std::time::Duration;

use mfoundry::app::RunningApp;
use mfoundry::config::Settings;
use mfoundry::hl7::{AckStamp, FixedStamper};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The stamp every test ACK carries, so ACK bytes can be compared exactly.
pub fn fixed_stamp() -> AckStamp {
    AckStamp {
        timestamp: "20261122083000+0000".to_owned(),
        control_id: "ACK00001".to_owned(),
    }
}

/// Settings for a test server on an ephemeral loopback port, with `overrides` applied.
pub fn settings(overrides: &[(&str, &str)]) -> Settings {
    let mut vars: Vec<(String, String)> = vec![("LISTEN_ADDR".into(), "127.0.0.1:0".into())];
    vars.extend(
        overrides
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
    );
    Settings::from_lookup(&|name| {
        vars.iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    })
    .expect("test settings are valid")
}

/// Start the app with fixed ACK stamps.
pub async fn start(overrides: &[(&str, &str)]) -> RunningApp {
    RunningApp::start_with_stamper(settings(overrides), Arc::new(FixedStamper(fixed_stamp())))
        .await
        .expect("app starts")
}

/// Connect to the app.
pub async fn connect(app: &RunningApp) -> TcpStream {
    let stream = TcpStream::connect(app.local_addr())
        .await
        .expect("connects");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// MLLP-frame a message.
pub fn framed(message: &[u8]) -> Vec<u8> {
    mfoundry::mllp::frame(message)
}

/// Read one MLLP frame (without framing bytes), or `None` if the server closed the connection
/// or sent nothing within `timeout`. Reads byte by byte so a following frame stays unread.
pub async fn read_frame(stream: &mut TcpStream, timeout: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if received.ends_with(&[0x1C, 0x0D]) {
            assert_eq!(
                received.first(),
                Some(&0x0B),
                "a frame starts with a start block"
            );
            return Some(received[1..received.len() - 2].to_vec());
        }
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout_at(deadline, stream.read(&mut byte)).await;
        match read {
            Ok(Ok(0)) | Err(_) => return None,
            Ok(Ok(_)) => received.push(byte[0]),
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Ok(Err(error)) => panic!("read failed: {error}"),
        }
    }
}

/// Read one ACK frame, failing the test when none comes within five seconds.
pub async fn expect_ack(stream: &mut TcpStream) -> Vec<u8> {
    read_frame(stream, Duration::from_secs(5))
        .await
        .expect("an ACK frame")
}

/// Assert that the server closes the connection within `timeout` without sending anything.
pub async fn expect_closed_silently(stream: &mut TcpStream, timeout: Duration) {
    let mut chunk = [0u8; 1024];
    match tokio::time::timeout(timeout, stream.read(&mut chunk)).await {
        Ok(Ok(0)) => {}
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Ok(count)) => panic!(
            "expected a silent close, got {count} bytes: {:?}",
            String::from_utf8_lossy(&chunk[..count])
        ),
        Ok(Err(error)) => panic!("read failed: {error}"),
        Err(_) => panic!("connection still open after {timeout:?}"),
    }
}

/// Write bytes and flush.
pub async fn write(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).await.expect("write");
    stream.flush().await.expect("flush");
}

/// A field of a segment of an ACK, e.g. `field(ack, "MSA", 1)`.
pub fn field(message: &[u8], segment: &str, number: usize) -> String {
    let text = String::from_utf8_lossy(message);
    let line = text
        .split('\r')
        .find(|line| line.starts_with(segment))
        .unwrap_or_else(|| panic!("no {segment} segment in {text:?}"));
    let fields: Vec<&str> = line.split('|').collect();
    let index = if segment == "MSH" { number - 1 } else { number };
    fields.get(index).copied().unwrap_or_default().to_owned()
}

/// An ADT^A01 message with the given control id, version and terminator.
pub fn adt(control_id: &str, version: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|SENDAPP|SENDFAC|RECVAPP|RECVFAC|20261122080000||ADT^A01^ADT_A01|{control_id}|P|{version}\rEVN|A01|20261122080000\rPID|1||12345^^^HOSP^MR||DOE^JOHN||19700101|M\r"
    )
    .into_bytes()
}
