//! Keyed lanes (`order_by`, `lanes`, `on_dead_letter`) through the real app and a real MLLP
//! downstream played by the test: messages of one key arrive in the order they were
//! received, keys are delivered in parallel, a failing message holds only its own key, and a
//! dead letter releases its key or holds it as configured.

use crate::common;

use std::time::Duration;

use common::eventually;
use common::peer::{Answer, peer};

/// `count` messages for each of `patients`, interleaved (P0-0, P1-0, …, P0-1, …); control
/// ids `<patient>-<n>`.
fn interleaved(patients: usize, count: usize) -> Vec<(String, Vec<u8>)> {
    let mut messages = Vec::new();
    for n in 0..count {
        for patient in 0..patients {
            let control = format!("P{patient}-{n}");
            let body = format!(
                "MSH|^~\\&|EHR|H|LAB|H|20261206083000||ADT^A08^ADT_A01|{control}|P|2.5.1\rPID|1||P{patient}^^^H^MR||DOE^JO\r"
            );
            messages.push((control, body.into_bytes()));
        }
    }
    messages
}

fn yaml(port: u16, extra: &str) -> String {
    format!(
        "connectors:\n  - name: downstream\n    type: mllp\n    host: 127.0.0.1\n    port: {port}\n    order_by: pid.id\n    retry:\n      initial_delay: 5ms\n      max_delay: 20ms\n{extra}"
    )
}

async fn send(app: &common::TestApp, messages: &[(String, Vec<u8>)]) {
    let mut stream = common::connect(app).await;
    for (control, body) in messages {
        common::write(&mut stream, &common::framed(body)).await;
        let reply = common::expect_ack(&mut stream).await;
        assert_eq!(common::field(&reply, "MSA", 1), "AA", "{control}");
    }
}

/// Each patient's control ids in the order the downstream first got them.
fn per_key(received: &[String]) -> std::collections::BTreeMap<String, Vec<usize>> {
    let mut keys: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
    for control in received {
        let (patient, n) = control.split_once('-').expect("P-n");
        let list = keys.entry(patient.to_owned()).or_default();
        let n: usize = n.parse().expect("n");
        if !list.contains(&n) {
            list.push(n);
        }
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_arrives_in_order_and_keys_go_in_parallel() {
    let downstream = peer(|_, _| Answer::AckAfter("AA", 20)).await;
    let yaml = yaml(downstream.addr.port(), "    lanes: 4\n");
    let app = common::start_with_yaml(Some(&yaml), &[]).await;
    let messages = interleaved(6, 8);
    send(&app, &messages).await;
    eventually("every message delivered", || {
        per_key(&downstream.received())
            .values()
            .map(Vec::len)
            .sum::<usize>()
            == messages.len()
    })
    .await;
    for (patient, order) in per_key(&downstream.received()) {
        assert_eq!(order, (0..8).collect::<Vec<_>>(), "{patient} in order");
    }
    let at_once = downstream
        .most_at_once
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (2..=4).contains(&at_once),
        "up to 4 lanes deliver at once: {at_once}"
    );
    assert!(app.shutdown(Duration::from_secs(10)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_message_holds_only_its_own_key() {
    // P0-1 is answered AE for ever: P0's later messages wait, every other key flows.
    let downstream = peer(|control, _| {
        if control == "P0-1" {
            Answer::Ack("AE")
        } else {
            Answer::Ack("AA")
        }
    })
    .await;
    let yaml = yaml(downstream.addr.port(), "    lanes: 3\n");
    let app = common::start_with_yaml(Some(&yaml), &[]).await;
    send(&app, &interleaved(4, 5)).await;
    eventually("the other keys delivered", || {
        let keys = per_key(&downstream.received());
        (1..4).all(|patient| keys.get(&format!("P{patient}")).map(Vec::len) == Some(5))
    })
    .await;
    // Retried meanwhile, never passed.
    eventually("P0-1 retried", || {
        downstream
            .received()
            .iter()
            .filter(|control| *control == "P0-1")
            .count()
            >= 3
    })
    .await;
    assert_eq!(
        per_key(&downstream.received()).get("P0").cloned(),
        Some(vec![0, 1]),
        "P0's later messages wait behind P0-1"
    );
    assert!(app.shutdown(Duration::from_secs(10)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_releases_its_key_or_holds_it() {
    for (setting, holds) in [("continue", false), ("hold_key", true)] {
        // P0-0 is refused (AR) the first time: it goes to the dead-letter queue.
        let downstream = peer(|control, count| {
            if control == "P0-0" && count == 1 {
                Answer::Ack("AR")
            } else {
                Answer::Ack("AA")
            }
        })
        .await;
        let extra = format!("    lanes: 2\n    on_dead_letter: {setting}\n");
        let yaml = yaml(downstream.addr.port(), &extra);
        let app = common::start_with_yaml(Some(&yaml), &[]).await;
        send(&app, &interleaved(3, 4)).await;
        eventually("the other keys delivered", || {
            let keys = per_key(&downstream.received());
            (1..3).all(|patient| keys.get(&format!("P{patient}")).map(Vec::len) == Some(4))
        })
        .await;
        let connector = app.outbox().connector_id("downstream").expect("id");
        if holds {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(
                per_key(&downstream.received()).get("P0").cloned(),
                Some(vec![0]),
                "{setting}: P0's later messages wait for the dead letter"
            );
            // Replaying the dead letter releases the key: it goes first (though queued at
            // the tail), then the rest, in order.
            let dead = app
                .outbox()
                .snapshot()
                .expect("snapshot")
                .dead_letters(connector)
                .expect("dlq");
            assert_eq!(dead.len(), 1);
            app.outbox()
                .replay(connector, dead[0].0, None)
                .await
                .expect("replayed")
                .expect("it was there");
        }
        eventually("P0's later messages delivered", || {
            per_key(&downstream.received())
                .get("P0")
                .is_some_and(|order| order.len() == 4)
        })
        .await;
        assert_eq!(
            per_key(&downstream.received()).get("P0").cloned(),
            Some(vec![0, 1, 2, 3]),
            "{setting}"
        );
        if holds {
            eventually("the replayed P0-0 delivered", || {
                downstream
                    .received()
                    .iter()
                    .filter(|control| *control == "P0-0")
                    .count()
                    == 2
            })
            .await;
            let received = downstream.received();
            let again = received
                .iter()
                .rposition(|control| control == "P0-0")
                .expect("P0-0 twice");
            let next = received
                .iter()
                .position(|control| control == "P0-1")
                .expect("P0-1");
            assert!(
                again < next,
                "the replayed P0-0 goes before P0-1: {received:?}"
            );
        }
        assert!(app.shutdown(Duration::from_secs(10)).await);
    }
}

#[test]
fn lanes_without_order_by_are_refused_at_load() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    std::fs::write(
        dir.join("mfoundry.yaml"),
        "connectors:\n  - name: out\n    type: file\n    directory: out\n    lanes: 1\n  - name: keyed\n    type: file\n    directory: out2\n    order_by: pid.id\n    lanes: 0\n  - name: spaced\n    type: file\n    directory: out3\n    order_by: pid.id\n    min_interval: 1s\n  - name: typed\n    type: file\n    directory: out4\n    order_by: size(pid) > 0\n",
    )
    .expect("config");
    let (code, stdout, stderr) =
        common::run_binary(dir, &["check", "--config", "mfoundry.yaml"], &[]);
    let printed = format!("{stdout}{stderr}");
    assert_eq!(code, 64, "{printed}");
    assert!(
        printed.contains("`lanes` and `on_dead_letter` need `order_by`"),
        "{printed}"
    );
    assert!(
        printed.contains("a whole number from 1 to 256"),
        "{printed}"
    );
    assert!(
        printed.contains("`min_interval` spaces the sends"),
        "{printed}"
    );
    assert!(
        printed.contains("order_by of connector \"typed\""),
        "{printed}"
    );
}

/// kill -9 while lanes deliver, twice, then a clean restart: nothing acknowledged is lost,
/// each key's messages first arrived in the order they were received, and a message arrives
/// twice only when it was in hand at a kill (at most `lanes` per kill).
#[test]
fn lanes_keep_per_key_order_and_lose_nothing_across_sigkill() {
    const LANES: usize = 8;
    const PATIENTS: usize = 12;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let downstream = runtime.block_on(peer(|_, _| Answer::AckAfter("AA", 2)));
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    let config = format!(
        "connectors:\n  - name: downstream\n    type: mllp\n    host: 127.0.0.1\n    port: {}\n    order_by: pid.id\n    lanes: {LANES}\n    retry:\n      initial_delay: 5ms\n      max_delay: 50ms\n",
        downstream.addr.port()
    );
    std::fs::write(dir.join("mfoundry.yaml"), config).expect("config");
    let message = |sender: usize, sequence: usize| {
        let (patient, n) = (sequence % PATIENTS, sequence / PATIENTS);
        let control = format!("S{sender}P{patient}-{n}");
        let body = format!(
            "MSH|^~\\&|EHR|H|LAB|H|20261206083000||ADT^A08^ADT_A01|{control}|P|2.5.1\rPID|1||S{sender}P{patient}^^^H^MR||DOE^JO\r"
        );
        (control, body.into_bytes())
    };
    let kills = 2;
    let acknowledged = load_with_kills(dir, 2, kills, message, &|| downstream.received());
    assert!(
        acknowledged.len() > 100,
        "the load ran: {}",
        acknowledged.len()
    );
    let received = downstream.received();
    let mut first: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
    let mut seen = std::collections::HashSet::new();
    let mut repeats = 0;
    for control in &received {
        if !seen.insert(control.clone()) {
            repeats += 1;
            continue;
        }
        let (key, n) = control.split_once('-').expect("key-n");
        first
            .entry(key.to_owned())
            .or_default()
            .push(n.parse().expect("n"));
    }
    for (key, order) in &first {
        assert!(
            order.windows(2).all(|pair| pair[0] < pair[1]),
            "{key} first arrived in the order received: {order:?}"
        );
    }
    assert!(
        repeats <= LANES * kills,
        "only messages in hand at a kill arrive twice: {repeats}"
    );
    eprintln!(
        "{} acknowledged, {} arrivals, {repeats} sent again after a kill",
        acknowledged.len(),
        received.len()
    );
    drop(runtime);
}

/// The same for a FIFO connector, whose mark of a delivered message is committed while the
/// next one is sent (ADR 0003, amended): across kill -9 nothing acknowledged is lost, every
/// message first arrives in the order received, and only the entry in hand and those whose
/// marks were not committed (at most 16 on their way and 16 waiting for them) arrive twice
/// per kill.
#[test]
fn fifo_keeps_order_and_loses_nothing_across_sigkill() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let downstream = runtime.block_on(peer(|_, _| Answer::AckAfter("AA", 1)));
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    let config = format!(
        "connectors:\n  - name: downstream\n    type: mllp\n    host: 127.0.0.1\n    port: {}\n",
        downstream.addr.port()
    );
    std::fs::write(dir.join("mfoundry.yaml"), config).expect("config");
    let message = |sender: usize, sequence: usize| {
        let control = format!("F{sender}-{sequence}");
        let body = format!(
            "MSH|^~\\&|EHR|H|LAB|H|20261206083000||ADT^A08^ADT_A01|{control}|P|2.5.1\rPID|1||P{sequence}^^^H^MR||DOE^JO\r"
        );
        (control, body.into_bytes())
    };
    let kills = 2;
    let acknowledged = load_with_kills(dir, 1, kills, message, &|| downstream.received());
    assert!(
        acknowledged.len() > 100,
        "the load ran: {}",
        acknowledged.len()
    );
    let repeats = first_arrivals_in_order(&downstream.received(), &acknowledged);
    assert!(
        repeats <= (2 * 16 + 1) * kills,
        "only the entry in hand and the unrecorded ones arrive twice per kill: {repeats}"
    );
    drop(runtime);
}

/// Check that the first arrival of each acknowledged message (control ids, as the
/// downstream got them) keeps the order acknowledged; returns how many arrivals repeated one
/// before them.
pub(crate) fn first_arrivals_in_order(arrivals: &[String], acknowledged: &[String]) -> usize {
    let mut seen = std::collections::HashSet::new();
    let first: Vec<&String> = arrivals
        .iter()
        .filter(|control| seen.insert((*control).clone()))
        .filter(|control| acknowledged.contains(control))
        .collect();
    assert_eq!(
        first,
        acknowledged.iter().collect::<Vec<_>>(),
        "first arrivals in the order received"
    );
    arrivals.len() - seen.len()
}

/// Run the gateway of `dir` `kills + 1` times under a load of `senders` connections, each
/// sending `message(sender, sequence)`: kill -9 after 600 ms the first `kills` times, then
/// wait until the downstream has every acknowledged message (`received`: the control ids it
/// got, in order) and stop. The acknowledged control ids, in the order acknowledged (per
/// sender).
pub(crate) fn load_with_kills(
    dir: &std::path::Path,
    senders: usize,
    kills: usize,
    message: fn(usize, usize) -> (String, Vec<u8>),
    received: &dyn Fn() -> Vec<String>,
) -> Vec<String> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut acknowledged = Vec::new();
    for round in 0..=kills {
        let mut server = common::Server::start(dir, "mfoundry.yaml", "data", &[]);
        let stop = Arc::new(AtomicBool::new(false));
        let running: Vec<_> = (0..senders)
            .map(|index| {
                let (addr, stop) = (server.addr.clone(), Arc::clone(&stop));
                std::thread::spawn(move || {
                    common::send_until_stopped(&addr, round * senders + index, &stop, message)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(600));
        if round < kills {
            server.child.kill().expect("SIGKILL");
            server.child.wait().expect("reaped");
        }
        stop.store(true, Ordering::Relaxed);
        for sender in running {
            acknowledged.extend(sender.join().expect("sender"));
        }
        if round == kills {
            // The last run drains what every run accepted.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !acknowledged
                .iter()
                .all(|control| received().contains(control))
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "every acknowledged message delivered within 60 s"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            server.stop();
        }
    }
    acknowledged
}
