//! An MLLP peer played by the tests: records the MSH-10 of every frame, answers as scripted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use mfoundry::mllp::{MllpCodec, frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::codec::Decoder;

/// What the test peer answers to one frame.
#[derive(Clone, Copy, Debug)]
pub enum Answer {
    Ack(&'static str),
    /// An AA for another control id.
    WrongMsa,
    /// A frame that is not HL7.
    Garbage,
    /// No answer at all.
    Hang,
    /// Close the connection.
    Close,
    /// Answer with this code, then close the connection (a peer that does not keep them).
    AckThenClose(&'static str),
    /// Answer with this code after this many milliseconds (a slow downstream).
    AckAfter(&'static str, u64),
}

pub type Script = dyn Fn(&str, usize) -> Answer + Send + Sync;

/// An MLLP peer: records the MSH-10 of every frame it receives, in order.
pub struct Peer {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<String>>>,
    pub connections: Arc<AtomicUsize>,
    /// The most frames it held at once before answering (`AckAfter`).
    pub most_at_once: Arc<AtomicUsize>,
}

impl Peer {
    pub fn received(&self) -> Vec<String> {
        self.received.lock().expect("lock").clone()
    }
}

pub async fn peer_on(listener: TcpListener, script: Arc<Script>) -> Peer {
    let addr = listener.local_addr().expect("addr");
    let received = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let most_at_once = Arc::new(AtomicUsize::new(0));
    let at_once = Arc::new(AtomicUsize::new(0));
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let (received_task, connections_task) = (Arc::clone(&received), Arc::clone(&connections));
    let most_task = Arc::clone(&most_at_once);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            connections_task.fetch_add(1, Ordering::SeqCst);
            let (script, received, seen) = (
                Arc::clone(&script),
                Arc::clone(&received_task),
                Arc::clone(&seen),
            );
            let (most, at_once) = (Arc::clone(&most_task), Arc::clone(&at_once));
            tokio::spawn(async move {
                let mut codec = MllpCodec::new(1 << 20);
                let mut buffer = BytesMut::new();
                loop {
                    while let Ok(Some(message)) = codec.decode(&mut buffer) {
                        let control_id = super::field(&message, "MSH", 10);
                        received.lock().expect("lock").push(control_id.clone());
                        let count = {
                            let mut seen = seen.lock().expect("lock");
                            let count = seen.entry(control_id.clone()).or_default();
                            *count += 1;
                            *count
                        };
                        let answer = script(&control_id, count);
                        let reply = match answer {
                            Answer::Ack(code) | Answer::AckThenClose(code) => {
                                Some(ack(code, &control_id))
                            }
                            Answer::AckAfter(code, millis) => {
                                let now = at_once.fetch_add(1, Ordering::SeqCst) + 1;
                                most.fetch_max(now, Ordering::SeqCst);
                                tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
                                at_once.fetch_sub(1, Ordering::SeqCst);
                                Some(ack(code, &control_id))
                            }
                            Answer::WrongMsa => Some(ack("AA", "SOMEONE-ELSE")),
                            Answer::Garbage => Some(b"hello".to_vec()),
                            Answer::Hang => None,
                            Answer::Close => return,
                        };
                        if let Some(reply) = reply
                            && stream.write_all(&frame(&reply)).await.is_err()
                        {
                            return;
                        }
                        if matches!(answer, Answer::AckThenClose(_)) {
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
    Peer {
        addr,
        received,
        connections,
        most_at_once,
    }
}

pub async fn peer(script: impl Fn(&str, usize) -> Answer + Send + Sync + 'static) -> Peer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    peer_on(listener, Arc::new(script)).await
}

pub fn ack(code: &str, control_id: &str) -> Vec<u8> {
    format!("MSH|^~\\&|RECV|FAC|SEND|FAC|20261122||ACK^A01^ACK|ACK-{control_id}|P|2.5\rMSA|{code}|{control_id}\r")
        .into_bytes()
}
