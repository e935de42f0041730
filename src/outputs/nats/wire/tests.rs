//! The protocol parser and a connection against a scripted server.
use super::*;

fn parse_all(bytes: &[u8]) -> Result<Vec<Op>, String> {
    let mut buffer = BytesMut::from(bytes);
    let mut ops = Vec::new();
    while let Some(op) = parse(&mut buffer)? {
        ops.push(op);
    }
    Ok(ops)
}

#[test]
fn server_operations_are_read() {
    let ops = parse_all(
        b"INFO {\"headers\":true}\r\nPING\r\n+OK\r\nMSG _INBOX.a.1 1 5\r\nhello\r\nHMSG _INBOX.a.2 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n-ERR 'Authorization Violation'\r\n",
    )
    .expect("parses");
    assert_eq!(ops.len(), 6);
    assert_eq!(ops[0], Op::Info(Bytes::from_static(b"{\"headers\":true}")));
    assert_eq!(ops[1], Op::Ping);
    assert_eq!(
        ops[3],
        Op::Msg {
            subject: "_INBOX.a.1".to_owned(),
            headers: None,
            payload: Bytes::from_static(b"hello"),
        }
    );
    let Op::Msg { headers, .. } = &ops[4] else {
        panic!("{:?}", ops[4]);
    };
    assert_eq!(headers.as_deref().and_then(status), Some(503));
    assert_eq!(ops[5], Op::Err("Authorization Violation".to_owned()));
}

#[test]
fn a_message_split_across_reads_waits_for_its_end() {
    let whole = b"MSG _INBOX.a.1 1 12\r\nhello\r\nthere\r\n";
    for cut in 0..whole.len() {
        let mut buffer = BytesMut::from(&whole[..cut]);
        assert_eq!(parse(&mut buffer), Ok(None), "cut at {cut}");
        buffer.extend_from_slice(&whole[cut..]);
        let op = parse(&mut buffer).expect("parses").expect("whole");
        assert_eq!(
            op,
            Op::Msg {
                subject: "_INBOX.a.1".to_owned(),
                headers: None,
                payload: Bytes::from_static(b"hello\r\nthere"),
            }
        );
        assert!(buffer.is_empty());
    }
}

#[test]
fn broken_input_is_an_error_not_a_panic() {
    for bad in [
        &b"MSG a 1 x\r\n"[..],
        b"HMSG a 1 9 3\r\n",
        b"WHAT\r\n",
        b"MSG a 1 3\r\nabcXY",
        b"MSG a\r\n",
        b"MSG a 1 99999999999\r\n",
    ] {
        assert!(
            parse_all(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert!(parse_all(&[b'x'; LINE_MAX + 1]).is_err());
}

#[test]
fn publishes_are_written_with_their_headers_and_sizes() {
    let headers = [("Nats-Msg-Id", "k-1".to_owned())];
    let message = Outgoing {
        subject: "hl7.ADT",
        headers: &headers,
        payload: b"MSH|",
    };
    let mut out = BytesMut::new();
    encode(&mut out, &message, "_INBOX.x.7");
    let block = "NATS/1.0\r\nNats-Msg-Id: k-1\r\n\r\n";
    assert_eq!(
        std::str::from_utf8(&out).expect("text"),
        format!(
            "HPUB hl7.ADT _INBOX.x.7 {} {}\r\n{block}MSH|\r\n",
            block.len(),
            block.len() + 4
        )
    );
    assert_eq!(message.size(), block.len() + 4);
    let mut out = BytesMut::new();
    encode(
        &mut out,
        &Outgoing {
            subject: "$JS.API.STREAM.INFO.S",
            headers: &[],
            payload: b"",
        },
        "_INBOX.x.8",
    );
    assert_eq!(&out[..], b"PUB $JS.API.STREAM.INFO.S _INBOX.x.8 0\r\n\r\n");
}

#[test]
fn creds_files_give_their_jwt_and_seed() {
    let text = "-----BEGIN NATS USER JWT-----\neyJ0.abc.def\n------END NATS USER JWT------\n\n************************* IMPORTANT *************************\nNKEY Seed printed below\n\n-----BEGIN USER NKEY SEED-----\nSUAEXAMPLE\n------END USER NKEY SEED------\n";
    assert_eq!(creds(text), Some(("eyJ0.abc.def", "SUAEXAMPLE")));
    assert_eq!(creds("nothing here"), None);
}

#[test]
fn nkey_users_sign_the_nonce_and_secrets_stay_out_of_errors() {
    let pair = nkeys::KeyPair::new_user();
    let seed = pair.seed().expect("seed");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("user.nk");
    std::fs::write(&path, format!("{seed}\n")).expect("write");
    let fields = credentials(&NatsAuth::NkeyFile(path.clone()), Some("nonce-1")).expect("signed");
    assert_eq!(fields["nkey"], pair.public_key());
    let signature = data_encoding::BASE64URL_NOPAD
        .decode(fields["sig"].as_str().expect("sig").as_bytes())
        .expect("base64url");
    pair.verify(b"nonce-1", &signature)
        .expect("a valid signature");
    std::fs::write(&path, "SUAnot-a-seed-but-secret").expect("write");
    let error = credentials(&NatsAuth::NkeyFile(path), Some("n")).expect_err("refused");
    assert!(!error.contains("not-a-seed"), "{error}");
}

/// A scripted server: INFO, then CONNECT/SUB/PING answered with PONG; then it reads
/// `publishes` publishes and hands their reply subjects and the stream to `answer`.
async fn scripted<F, Fut>(publishes: usize, answer: F) -> (u16, tokio::task::JoinHandle<String>)
where
    F: FnOnce(Vec<String>, tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = String> + Send,
{
    use tokio::io::AsyncBufReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        stream
            .write_all(b"INFO {\"headers\":true,\"max_payload\":1048576}\r\n")
            .await
            .expect("info");
        let mut reader = tokio::io::BufReader::new(&mut stream);
        let mut replies = Vec::new();
        let mut line = String::new();
        while replies.len() < publishes {
            line.clear();
            if reader.read_line(&mut line).await.expect("read") == 0 {
                break;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.first().copied() {
                Some("PING") => reader.get_mut().write_all(b"PONG\r\n").await.expect("pong"),
                Some("HPUB") => {
                    replies.push(words[2].to_owned());
                    let total: usize = words[4].parse().expect("size");
                    let mut body = vec![0u8; total + 2];
                    reader.read_exact(&mut body).await.expect("body");
                }
                _ => {}
            }
        }
        answer(replies, stream).await
    });
    (port, task)
}

async fn open(port: u16) -> Connection {
    Connection::open(Target {
        host: "127.0.0.1",
        port,
        resolved: None,
        tls: None,
        auth: &NatsAuth::None,
        timeout: Duration::from_secs(5),
    })
    .await
    .expect("connects")
}

fn messages<'a>(
    subjects: &'a [&'a str],
    headers: &'a [(&'static str, String)],
) -> Vec<Outgoing<'a>> {
    subjects
        .iter()
        .map(|subject| Outgoing {
            subject,
            headers,
            payload: b"MSH|",
        })
        .collect()
}

const ACK: &str = "{\"stream\":\"S\",\"seq\":1}";

#[tokio::test]
async fn answers_are_matched_by_reply_subject_whatever_their_order() {
    let (port, server) = scripted(3, |replies, mut stream| async move {
        let inbox = replies[0].trim_end_matches(char::is_numeric).to_owned();
        let mut out = format!("MSG {inbox}999 1 {}\r\n{ACK}\r\nPING\r\n", ACK.len());
        out += &format!("MSG {} 1 {}\r\n{ACK}\r\n", replies[2], ACK.len());
        out += &format!("HMSG {} 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n", replies[1]);
        out += &format!("MSG {} 1 {}\r\n{ACK}\r\n", replies[0], ACK.len());
        stream.write_all(out.as_bytes()).await.expect("answers");
        let mut seen = vec![0u8; 64];
        let read = stream.read(&mut seen).await.expect("pong");
        String::from_utf8_lossy(&seen[..read]).into_owned()
    })
    .await;
    let mut connection = open(port).await;
    let headers = [("Nats-Msg-Id", "k".to_owned())];
    let (answers, broken) = connection
        .publish(
            &messages(&["a.1", "a.2", "a.3"], &headers),
            Duration::from_secs(5),
        )
        .await;
    assert!(!broken);
    let statuses: Vec<Option<u16>> = answers
        .iter()
        .map(|answer| answer.as_ref().expect("answered").status)
        .collect();
    assert_eq!(statuses, [None, Some(503), None]);
    assert_eq!(
        answers[0].as_ref().expect("answered").payload,
        ACK.as_bytes()
    );
    assert_eq!(
        server.await.expect("server"),
        "PONG\r\n",
        "the server's PING answered"
    );
}

#[tokio::test]
async fn a_refused_publish_is_named_and_the_connection_goes_on() {
    let (port, server) = scripted(2, |replies, mut stream| async move {
        let out = format!(
            "-ERR 'Permissions Violation for Publish to \"a.no\"'\r\nMSG {} 1 {}\r\n{ACK}\r\n",
            replies[0],
            ACK.len()
        );
        stream.write_all(out.as_bytes()).await.expect("answers");
        String::new()
    })
    .await;
    let mut connection = open(port).await;
    let headers = [("Nats-Msg-Id", "k".to_owned())];
    let (answers, broken) = connection
        .publish(
            &messages(&["a.ok", "a.no"], &headers),
            Duration::from_secs(5),
        )
        .await;
    server.await.expect("server");
    assert!(
        !broken,
        "a permissions violation leaves the connection open"
    );
    assert!(answers[0].is_ok());
    match &answers[1] {
        Err(Unanswered::Refused(text)) => assert!(text.contains("a.no"), "{text}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_connection_lost_mid_window_fails_the_rest() {
    let (port, server) = scripted(3, |replies, mut stream| async move {
        let out = format!("MSG {} 1 {}\r\n{ACK}\r\n", replies[0], ACK.len());
        stream.write_all(out.as_bytes()).await.expect("answers");
        drop(stream);
        String::new()
    })
    .await;
    let mut connection = open(port).await;
    let headers = [("Nats-Msg-Id", "k".to_owned())];
    let (answers, broken) = connection
        .publish(
            &messages(&["a.1", "a.2", "a.3"], &headers),
            Duration::from_secs(5),
        )
        .await;
    server.await.expect("server");
    assert!(broken);
    assert!(answers[0].is_ok());
    assert!(
        matches!(&answers[1], Err(Unanswered::Lost(_))),
        "{:?}",
        answers[1]
    );
    assert!(matches!(&answers[2], Err(Unanswered::Lost(_))));
}
