//! The MLLP framing matrix, against the real listener on 127.0.0.1:0 with raw bytes.

use crate::common;

use std::time::Duration;

use common::{adt, connect, expect_ack, expect_closed_silently, field, framed, start, write};
use tokio::io::AsyncWriteExt;

const SHORT: Duration = Duration::from_millis(300);

#[tokio::test]
async fn junk_before_start_block_is_discarded_and_counted() {
    let app = start(&[]).await;
    let mut stream = connect(&app).await;
    let mut bytes = b"\r\nnoise before the frame".to_vec();
    let junk = bytes.len() as u64;
    bytes.extend_from_slice(&framed(&adt("J1", "2.5.1")));
    write(&mut stream, &bytes).await;
    let ack = expect_ack(&mut stream).await;
    assert_eq!(field(&ack, "MSA", 1), "AA");
    assert_eq!(field(&ack, "MSA", 2), "J1");
    assert_eq!(app.stats().bytes_discarded, junk);
}

#[tokio::test]
async fn missing_trailer_then_idle_closes_without_ack() {
    let app = start(&[("IDLE_TIMEOUT", "300ms")]).await;
    let mut stream = connect(&app).await;
    let mut bytes = vec![0x0B];
    bytes.extend_from_slice(&adt("T1", "2.5.1"));
    write(&mut stream, &bytes).await;
    expect_closed_silently(&mut stream, Duration::from_secs(5)).await;
    let stats = app.stats();
    assert_eq!(stats.idle_timeouts, 1);
    assert_eq!(stats.frames_received, 0);
}

#[tokio::test]
async fn slow_frame_is_cut_by_frame_timeout() {
    let app = start(&[("IDLE_TIMEOUT", "5s"), ("FRAME_TIMEOUT", "400ms")]).await;
    let mut stream = connect(&app).await;
    write(&mut stream, &[0x0B]).await;
    let message = adt("SLOW", "2.5.1");
    let mut closed = false;
    for byte in message.iter().take(40) {
        // One byte every 50 ms keeps the idle timer happy but not the frame timer.
        if stream.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !closed {
        expect_closed_silently(&mut stream, Duration::from_secs(5)).await;
    }
    assert_eq!(app.stats().frame_timeouts, 1);
}

#[tokio::test]
async fn end_block_without_carriage_return_still_gets_an_ack() {
    let app = start(&[]).await;
    let mut stream = connect(&app).await;
    let mut bytes = vec![0x0B];
    bytes.extend_from_slice(&adt("NOCR", "2.5.1"));
    bytes.push(0x1C);
    write(&mut stream, &bytes).await;
    let ack = expect_ack(&mut stream).await;
    assert_eq!(field(&ack, "MSA", 2), "NOCR");
    // The connection stays usable, and the missing 0x0D was counted.
    write(&mut stream, &framed(&adt("NEXT", "2.5.1"))).await;
    assert_eq!(field(&expect_ack(&mut stream).await, "MSA", 2), "NEXT");
    assert_eq!(app.stats().missing_trailers, 1);
    assert_eq!(app.stats().bytes_discarded, 0);
}

#[tokio::test]
async fn two_frames_in_one_write_get_two_acks_in_order() {
    let app = start(&[]).await;
    let mut stream = connect(&app).await;
    let mut bytes = framed(&adt("FIRST", "2.5.1"));
    bytes.extend_from_slice(&framed(&adt("SECOND", "2.3")));
    write(&mut stream, &bytes).await;
    let first = expect_ack(&mut stream).await;
    let second = expect_ack(&mut stream).await;
    assert_eq!(field(&first, "MSA", 2), "FIRST");
    assert_eq!(field(&second, "MSA", 2), "SECOND");
    assert_eq!(field(&second, "MSH", 9), "ACK");
}

#[tokio::test]
async fn many_frames_are_answered_in_arrival_order() {
    let app = start(&[]).await;
    let mut stream = connect(&app).await;
    let mut bytes = Vec::new();
    for index in 0..50 {
        bytes.extend_from_slice(&framed(&adt(&format!("ORD{index:03}"), "2.5.1")));
    }
    write(&mut stream, &bytes).await;
    for index in 0..50 {
        let ack = expect_ack(&mut stream).await;
        assert_eq!(field(&ack, "MSA", 2), format!("ORD{index:03}"));
    }
}

#[tokio::test]
async fn one_byte_per_write_gives_the_same_ack() {
    let app = start(&[]).await;
    let message = framed(&adt("BYTE", "2.4"));
    let mut whole = connect(&app).await;
    write(&mut whole, &message).await;
    let expected = expect_ack(&mut whole).await;
    let mut trickle = connect(&app).await;
    for byte in &message {
        write(&mut trickle, &[*byte]).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(expect_ack(&mut trickle).await, expected);
}

#[tokio::test]
async fn empty_frame_is_ignored_and_connection_kept() {
    let app = start(&[]).await;
    let mut stream = connect(&app).await;
    write(&mut stream, &[0x0B, 0x1C, 0x0D]).await;
    write(&mut stream, &framed(&adt("AFTER", "2.5.1"))).await;
    let ack = expect_ack(&mut stream).await;
    assert_eq!(field(&ack, "MSA", 2), "AFTER");
    assert_eq!(app.stats().empty_frames, 1);
}

#[tokio::test]
async fn oversize_frame_closes_the_connection() {
    let app = start(&[("MAX_FRAME_SIZE", "1KiB")]).await;
    let mut exact = connect(&app).await;
    let mut fits = adt("FITS", "2.5.1");
    fits.resize(1024, b'X');
    write(&mut exact, &framed(&fits)).await;
    assert_eq!(field(&expect_ack(&mut exact).await, "MSA", 2), "FITS");

    let mut stream = connect(&app).await;
    let mut message = adt("BIG", "2.5.1");
    message.resize(4096, b'X');
    // The server may close before every byte is written; that is the point.
    let _ = stream.write_all(&framed(&message)).await;
    expect_closed_silently(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(app.stats().oversize_frames, 1);
}

#[tokio::test]
async fn unreadable_header_closes_without_a_guessed_ack() {
    let app = start(&[]).await;
    let mut stream = connect(&app).await;
    write(&mut stream, &framed(b"PID|1||12345\rOBX|1\r")).await;
    expect_closed_silently(&mut stream, Duration::from_secs(5)).await;
    let stats = app.stats();
    assert_eq!(stats.unreadable_frames, 1);
    assert_eq!(stats.acks.iter().sum::<u64>(), 0);
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_at_once() {
    let app = start(&[("MAX_CONNECTIONS", "1")]).await;
    let mut first = connect(&app).await;
    write(&mut first, &framed(&adt("ONE", "2.5.1"))).await;
    assert_eq!(field(&expect_ack(&mut first).await, "MSA", 2), "ONE");
    let mut second = connect(&app).await;
    expect_closed_silently(&mut second, SHORT * 10).await;
    assert_eq!(app.stats().connections_refused, 1);
    // The first connection still works, and its slot frees when it closes.
    write(&mut first, &framed(&adt("TWO", "2.5.1"))).await;
    assert_eq!(field(&expect_ack(&mut first).await, "MSA", 2), "TWO");
    drop(first);
    let mut third = None;
    for _ in 0..50 {
        let mut candidate = connect(&app).await;
        write(&mut candidate, &framed(&adt("THREE", "2.5.1"))).await;
        if let Some(ack) = common::read_frame(&mut candidate, SHORT).await {
            third = Some(ack);
            break;
        }
    }
    assert_eq!(field(&third.expect("slot freed"), "MSA", 2), "THREE");
}

#[tokio::test]
async fn idle_connection_is_closed_after_idle_timeout() {
    let app = start(&[("IDLE_TIMEOUT", "200ms")]).await;
    let mut stream = connect(&app).await;
    write(&mut stream, &framed(&adt("IDLE", "2.5.1"))).await;
    expect_ack(&mut stream).await;
    expect_closed_silently(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(app.stats().idle_timeouts, 1);
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_stops_accepting() {
    let app = start(&[]).await;
    let addr = app.local_addr();
    let mut stream = connect(&app).await;
    write(&mut stream, &framed(&adt("BEFORE", "2.5.1"))).await;
    expect_ack(&mut stream).await;
    assert!(
        app.shutdown(Duration::from_secs(5)).await,
        "drained in time"
    );
    expect_closed_silently(&mut stream, Duration::from_secs(5)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn junk_does_not_keep_a_connection_open() {
    let app = start(&[("IDLE_TIMEOUT", "300ms")]).await;
    let mut stream = connect(&app).await;
    let mut closed = false;
    for _ in 0..40 {
        // A byte outside any frame every 50 ms: never idle by bytes, but no frame either.
        if stream.write_all(b"x").await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !closed {
        expect_closed_silently(&mut stream, Duration::from_secs(5)).await;
    }
    assert_eq!(app.stats().idle_timeouts, 1);
}

#[tokio::test]
async fn crlf_after_the_end_block_is_not_counted_as_junk() {
    let app = start(&[]).await;
    let mut stream = connect(&app).await;
    let mut bytes = framed(&adt("LF1", "2.5.1"));
    bytes.push(b'\n');
    write(&mut stream, &bytes).await;
    assert_eq!(field(&expect_ack(&mut stream).await, "MSA", 2), "LF1");
    write(&mut stream, &framed(&adt("LF2", "2.5.1"))).await;
    assert_eq!(field(&expect_ack(&mut stream).await, "MSA", 2), "LF2");
    assert_eq!(app.stats().bytes_discarded, 0);
}

#[tokio::test]
async fn a_received_ack_is_ignored_and_counted() {
    let app = start(&[]).await;
    let mut stream = connect(&app).await;
    write(
        &mut stream,
        &framed(b"MSH|^~\\&|A|B|C|D|20261122080000||ACK^A01^ACK|X|P|2.5.1\rMSA|AA|Y\r"),
    )
    .await;
    write(&mut stream, &framed(&adt("REAL", "2.5.1"))).await;
    assert_eq!(field(&expect_ack(&mut stream).await, "MSA", 2), "REAL");
    assert_eq!(app.stats().acks_received, 1);
}

/// A flood of connections over `MAX_CONNECTIONS` is counted one by one but logged at most
/// once a second (with how many were held back), so it cannot flood the log or flush the
/// admin API's ring.
#[test]
fn a_flood_of_refused_connections_is_counted_not_logged_line_by_line() {
    let directory = tempfile::tempdir().expect("tempdir");
    std::fs::write(directory.path().join("gw.yaml"), "connectors: []\n").expect("config");
    let server = common::Server::start(
        directory.path(),
        "gw.yaml",
        "data",
        &[("MAX_CONNECTIONS", "1")],
    );
    let held = std::net::TcpStream::connect(&server.addr).expect("first connection");
    std::thread::sleep(Duration::from_millis(100));
    let flood = 300;
    for _ in 0..flood {
        // Each is accepted by the kernel and closed by mfoundry at once.
        let _ = std::net::TcpStream::connect(&server.addr);
    }
    std::thread::sleep(Duration::from_millis(300));
    drop(held);
    let logs = server.stop_and_collect();
    let lines: Vec<&String> = logs
        .iter()
        .filter(|line| line.contains("MAX_CONNECTIONS reached"))
        .collect();
    assert!(
        !lines.is_empty() && lines.len() <= 10,
        "{} refusal lines for {flood} refusals:\n{}",
        lines.len(),
        lines
            .iter()
            .map(|line| line.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test]
async fn one_address_holds_at_most_max_connections_per_peer() {
    let app = start(&[("MAX_CONNECTIONS_PER_PEER", "2")]).await;
    let mut first = connect(&app).await;
    let mut second = connect(&app).await;
    for (stream, id) in [(&mut first, "ONE"), (&mut second, "TWO")] {
        write(stream, &framed(&adt(id, "2.5.1"))).await;
        assert_eq!(field(&expect_ack(stream).await, "MSA", 2), id);
    }
    let mut third = connect(&app).await;
    expect_closed_silently(&mut third, SHORT * 10).await;
    assert_eq!(app.stats().connections_refused, 1);
    // A slot given back is free again.
    drop(first);
    let mut again = None;
    for _ in 0..50 {
        let mut candidate = connect(&app).await;
        write(&mut candidate, &framed(&adt("THREE", "2.5.1"))).await;
        if let Some(ack) = common::read_frame(&mut candidate, SHORT).await {
            again = Some(ack);
            break;
        }
    }
    assert_eq!(field(&again.expect("slot freed"), "MSA", 2), "THREE");
}

/// `MAX_FRAME_MEMORY` holds for all connections together: large frames beyond it wait
/// (reading nothing) while others hold the budget, the waits are counted, and every frame
/// is answered once memory comes back. A frame of many tiny segments is counted with its
/// segment index.
#[tokio::test]
async fn large_frames_share_one_memory_budget_and_wait_for_it() {
    let app = start(&[
        ("MAX_FRAME_SIZE", "1MiB"),
        ("MAX_FRAME_MEMORY", "2MiB"),
        ("FRAME_TIMEOUT", "20s"),
        ("IDLE_TIMEOUT", "20s"),
    ])
    .await;
    // About 870 KiB each: a note repeated.
    let big = |control_id: &str| {
        let mut message = adt(control_id, "2.5.1");
        for _ in 0..11_000 {
            message.extend_from_slice(
                b"NTE|1||0123456789012345678901234567890123456789012345678901234567890123456789\r",
            );
        }
        framed(&message)
    };
    // Three frames sent without their last two bytes: together they need more than the
    // budget, so at least one connection waits before it can read all of its frame.
    let mut held = Vec::new();
    for index in 0..3 {
        let frame = big(&format!("MEM{index}"));
        let mut stream = connect(&app).await;
        let cut = frame.len() - 2;
        let head = frame[..cut].to_vec();
        held.push(tokio::spawn(async move {
            stream.write_all(&head).await.expect("write");
            (stream, frame[cut..].to_vec())
        }));
    }
    let mut waited = false;
    for _ in 0..100 {
        if app.stats().memory_waits > 0 {
            waited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(waited, "a connection waited for memory: {:?}", app.stats());
    assert_eq!(app.stats().frames_received, 0);
    // Each frame ends in turn; a waiting one reads on once another gave its memory back.
    let mut answered = 0;
    for task in held {
        let (mut stream, tail) = task.await.expect("writer");
        write(&mut stream, &tail).await;
        assert_eq!(field(&expect_ack(&mut stream).await, "MSA", 1), "AA");
        answered += 1;
    }
    assert_eq!(answered, 3);
    // A mid-size frame leaves its connection holding nothing once answered, though the
    // connection stays open: the next large frame elsewhere is not kept waiting.
    let mid = |control_id: &str| {
        let mut message = adt(control_id, "2.5.1");
        for _ in 0..1_200 {
            message.extend_from_slice(
                b"NTE|1||0123456789012345678901234567890123456789012345678901234567890123456789\r",
            );
        }
        framed(&message)
    };
    let mut idle = connect(&app).await;
    write(&mut idle, &mid("MID1")).await;
    assert_eq!(field(&expect_ack(&mut idle).await, "MSA", 1), "AA");
    let mut other = connect(&app).await;
    write(&mut other, &mid("MID2")).await;
    assert_eq!(field(&expect_ack(&mut other).await, "MSA", 1), "AA");
    drop(idle);
    // Tiny segments: the index is counted too (8 bytes each), and the frame still passes.
    let mut tiny = adt("MEM3", "2.5.1");
    for _ in 0..400_000 {
        tiny.extend_from_slice(b"Z\r");
    }
    let mut stream = connect(&app).await;
    write(&mut stream, &framed(&tiny)).await;
    assert_eq!(field(&expect_ack(&mut stream).await, "MSA", 1), "AA");
}
