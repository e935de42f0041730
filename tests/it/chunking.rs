//! Property: any chunking of a stream of messages yields identical frames and identical ACKs,
//! checked against the real listener over TCP.

use crate::common;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use proptest::prelude::*;
use tokio::runtime::Runtime;

/// One server for all cases: (runtime, app).
fn server() -> &'static (Runtime, common::TestApp) {
    static SERVER: OnceLock<(Runtime, common::TestApp)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let app = runtime.block_on(common::start(&[]));
        (runtime, app)
    })
}

/// Message variants: versions, terminators, custom delimiters, enhanced mode, a reject.
fn message(kind: u8, index: usize) -> Vec<u8> {
    let id = format!("P{index}");
    match kind % 6 {
        0 => common::adt(&id, "2.5.1"),
        1 => common::adt(&id, "2.3")
            .iter()
            .map(|&b| if b == b'\r' { b'\n' } else { b })
            .collect(),
        2 => format!(
            "MSH!@*$%#!A!B!C!D!20261122080000!!ORU@R01@ORU_R01!{id}!P!2.7\r\nOBX!1!ST!X!!v\r\n"
        )
        .into_bytes(),
        3 => format!("MSH|^~\\&|A|B|C|D|20261122080000||ADT^A08|{id}|P|2.4|||AL|NE\r").into_bytes(),
        4 => format!("MSH|^~\\&|A|B|C|D|20261122080000|||{id}|P|2.5\r").into_bytes(),
        _ => format!("MSH|^~\\&|A|B|C|D|20261122080000||ADT^A01|{id}|P|2.3.1\rPID|1||\\F\\x\r")
            .into_bytes(),
    }
}

async fn exchange(addr: SocketAddr, chunks: &[Vec<u8>], count: usize) -> Vec<Vec<u8>> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    stream.set_nodelay(true).expect("nodelay");
    for chunk in chunks {
        common::write(&mut stream, chunk).await;
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let mut acks = Vec::with_capacity(count);
    for _ in 0..count {
        acks.push(common::expect_ack(&mut stream).await);
    }
    acks
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_chunking_gives_identical_acks(
        kinds in proptest::collection::vec(any::<u8>(), 1..5),
        junk in proptest::collection::vec(any::<u8>().prop_filter("no start block", |b| *b != 0x0B), 0..8),
        cut_seeds in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let mut stream = junk.clone();
        for (index, kind) in kinds.iter().enumerate() {
            stream.extend_from_slice(&common::framed(&message(*kind, index)));
        }
        let mut cuts: Vec<usize> = cut_seeds.iter().map(|seed| seed.index(stream.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut chunks = Vec::new();
        let mut start = 0;
        for cut in cuts {
            chunks.push(stream[start..cut].to_vec());
            start = cut;
        }
        chunks.push(stream[start..].to_vec());

        let (runtime, app) = server();
        let addr = app.local_addr();
        let whole = runtime.block_on(exchange(addr, std::slice::from_ref(&stream), kinds.len()));
        let chunked = runtime.block_on(exchange(addr, &chunks, kinds.len()));
        prop_assert_eq!(&chunked, &whole);
        for (index, ack) in whole.iter().enumerate() {
            let parsed = mfoundry::hl7::Message::parse(bytes::Bytes::from(ack.clone())).expect("ACK parses");
            let expected = format!("P{index}");
            prop_assert_eq!(parsed.value("MSA-2"), Some(expected.as_bytes()));
        }
    }
}
