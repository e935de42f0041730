//! `mfoundry send` against peers that behave differently from mfoundry's own listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::BytesMut;
use mfoundry::cli::{SendArgs, run_send};
use mfoundry::hl7::{AckCode, AckStamp, Message, build_ack};
use mfoundry::mllp::{MllpCodec, frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::codec::Decoder;

/// A peer that answers every frame with AA, ignoring MSH-15/16, and optionally closes the
/// connection after each ACK.
async fn always_ack_peer(close_after_each: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut codec = MllpCodec::new(1 << 20);
                let mut buffer = BytesMut::new();
                loop {
                    while let Ok(Some(bytes)) = codec.decode(&mut buffer) {
                        let message = Message::parse(bytes).expect("peer parses");
                        let stamp = AckStamp {
                            timestamp: "20261122083000".to_owned(),
                            control_id: "PEER".to_owned(),
                        };
                        let ack = build_ack(&message, AckCode::AA, None, &stamp);
                        if stream.write_all(&frame(&ack)).await.is_err() || close_after_each {
                            return;
                        }
                    }
                    match stream.read_buf(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    addr
}

fn file_with(messages: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("messages.hl7");
    std::fs::write(&path, messages.join("\n")).expect("write");
    (directory, path)
}

fn args(addr: SocketAddr, path: PathBuf) -> SendArgs {
    SendArgs {
        addr: addr.to_string(),
        timeout: Duration::from_secs(5),
        tls: mfoundry::cli::TlsArgs::default(),
        batch: false,
        files: vec![path],
    }
}

#[tokio::test]
async fn an_unrequested_ack_is_not_taken_for_the_next_messages_ack() {
    let addr = always_ack_peer(false).await;
    let (_directory, path) = file_with(&[
        "MSH|^~\\&|A|B|C|D|20261122080000||ADT^A01|QUIET|P|2.5.1|||NE|NE\nPID|1",
        "MSH|^~\\&|A|B|C|D|20261122080000||ADT^A01|LOUD|P|2.5.1\nPID|1",
    ]);
    let mut out = Vec::new();
    let summary = run_send(&args(addr, path), &mut out).await.expect("runs");
    let text = String::from_utf8(out).expect("utf-8");
    assert!(summary.all_accepted(), "{text}");
    assert!(text.contains("QUIET\t--\tno ACK requested"), "{text}");
    assert!(text.contains("LOUD\tAA\t"), "{text}");
}

#[tokio::test]
async fn a_connection_closed_by_the_peer_is_replaced() {
    let addr = always_ack_peer(true).await;
    let (_directory, path) = file_with(&[
        "MSH|^~\\&|A|B|C|D|20261122080000||ADT^A01|ONE|P|2.5.1",
        "MSH|^~\\&|A|B|C|D|20261122080000||ADT^A01|TWO|P|2.5.1",
        "MSH|^~\\&|A|B|C|D|20261122080000||ADT^A01|THREE|P|2.5.1",
    ]);
    let mut out = Vec::new();
    let summary = run_send(&args(addr, path), &mut out).await.expect("runs");
    let text = String::from_utf8(out).expect("utf-8");
    assert_eq!(summary.sent, 3);
    assert!(summary.all_accepted(), "{text}");
}

#[tokio::test]
async fn control_characters_from_the_peer_are_not_printed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut buffer = [0u8; 4096];
        let _ = stream.read(&mut buffer).await;
        let ack = b"MSH|^~\\&|C|D|A|B|20261122||ACK|1|P|2.5.1\rMSA|AE|ESC|bad \\X1B5B324A\\ text\r";
        let _ = stream.write_all(&frame(ack)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let (_directory, path) = file_with(&["MSH|^~\\&|A|B|C|D|20261122080000||ADT^A01|ESC|P|2.5.1"]);
    let mut out = Vec::new();
    let summary = run_send(&args(addr, path), &mut out).await.expect("runs");
    let text = String::from_utf8(out).expect("utf-8");
    assert!(!summary.all_accepted());
    assert!(!text.contains('\u{1b}'), "{text:?}");
    assert!(text.contains("ESC\tAE\tbad ?[2J text"), "{text:?}");
}
