//! A bad-input campaign against the real binary: frames mutated from real messages (bit
//! flips, cut and spliced bytes, delimiter and encoding-character swaps, framing bytes inside
//! frames, huge fields and many tiny segments, odd MSH-2/MSH-18 values, junk between frames)
//! sent over several connections to a gateway with rules, a filter, a transform, retransmit
//! detection and encryption at rest on. Each mutated frame is followed on its connection by a
//! valid probe message with a unique control id: some frames are rightly left unanswered (an
//! empty frame, an ACK, MSH-15/16 asking for none), but the probe must always be answered. It
//! checks that the process never dies, that nothing hangs (every probe is answered, or the
//! connection closed, within 30 s), and that every answer is a parseable HL7 ACK with MSA-1
//! and MSA-2.
//!
//! `cargo test --test fuzz` runs 5,000 frames. For a campaign:
//! `MFOUNDRY_FUZZ_FRAMES=1000000 cargo test --release --test fuzz -- --nocapture`
//! (`MFOUNDRY_FUZZ_SEED` picks the seed; it is printed either way).

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mfoundry::hl7::Message;

/// xorshift64*: reproducible from the printed seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const CONFIG: &str = "\
connectors:
  - name: lab
    type: file
    directory: out-lab
    paused: true
    filter: msh.msg_type == 'ORU' && obx_list.exists(o, o.status == 'F')
    transform:
      - set: MSH-5
        value: '\"LABSYS\"'
      - copy: {from: PID-5, to: PID-9}
  - name: all
    type: file
    directory: out-all
    paused: true
validation:
  rules:
    - name: patient-id
      expression: pid.id == '' || pid.id.matches('^[A-Za-z0-9^&-]+$') || true
    - name: plausible-birth
      expression: pid.dob == '' || size(pid.dob) >= 4 || true
";

const SPECIALS: &[u8] = b"|^~\\&\r\n\x0b\x1c\x00\xff#EXFTSR";

fn seeds() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seeds = Vec::new();
    for dir in ["examples/messages", "examples/bench"] {
        let mut names: Vec<_> = std::fs::read_dir(root.join(dir))
            .expect("examples")
            .map(|entry| entry.expect("entry").path())
            .collect();
        names.sort();
        for path in names {
            let bytes = std::fs::read(&path).expect("read");
            for message in mfoundry::hl7::split_messages(&bytes).expect("splits") {
                seeds.push(message.to_vec());
            }
        }
    }
    assert!(!seeds.is_empty());
    seeds
}

/// One mutated message (not framed).
fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut message = seeds[rng.below(seeds.len())].clone();
    // A fresh control id most of the time, so most frames are new messages, some retransmits.
    if rng.chance(85) {
        let id = format!("F{}", rng.next() % 1_000_000_000);
        if let Some(at) = find_field(&message, 10) {
            message.splice(at.0..at.1, id.bytes());
        }
    }
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = message.len().max(1);
        match rng.below(12) {
            0 => {
                let at = rng.below(len);
                if at < message.len() {
                    message[at] ^= 1 << rng.below(8);
                }
            }
            1 => {
                let at = rng.below(len);
                message.insert(at.min(message.len()), SPECIALS[rng.below(SPECIALS.len())]);
            }
            2 => {
                let start = rng.below(len);
                let end = (start + rng.below(64)).min(message.len());
                message.drain(start.min(end)..end);
            }
            3 => message.truncate(rng.below(len)),
            4 => {
                // A huge field.
                let at = rng.below(len).min(message.len());
                // Mostly a few KiB; one in twenty up to 200 KB.
                let bound = if rng.chance(5) { 200_000 } else { 4_000 };
                let size = 1 + rng.below(bound);
                let fill = b"ABCDEFGHIJ\\X0D\\^&~"[rng.below(18)];
                message.splice(at..at, std::iter::repeat_n(fill, size));
            }
            5 => {
                // Many tiny segments.
                let bound = if rng.chance(5) { 50_000 } else { 500 };
                let count = rng.below(bound);
                for _ in 0..count {
                    message.extend_from_slice(b"Z\r");
                }
            }
            6 => {
                // Another encoding-characters field.
                if message.len() > 8 {
                    let chars: Vec<u8> = (0..rng.below(6))
                        .map(|_| SPECIALS[rng.below(SPECIALS.len())])
                        .collect();
                    message.splice(4..8.min(message.len()), chars);
                }
            }
            7 => {
                // MSH-18 and MSH-12 oddities.
                let value: &[u8] = [
                    &b"UNICODE UTF-8"[..],
                    b"8859/1",
                    b"ISO IR87",
                    b"GB 18030-2000",
                    b"\xff\xfe",
                    b"",
                    b"2.9.9",
                ][rng.below(7)];
                if let Some(at) = find_field(&message, 18 - 6 * rng.below(2)) {
                    message.splice(at.0..at.1, value.iter().copied());
                }
            }
            8 => {
                // Splice part of another seed.
                let other = &seeds[rng.below(seeds.len())];
                let start = rng.below(other.len());
                let end = (start + rng.below(400)).min(other.len());
                let at = rng.below(len).min(message.len());
                message.splice(at..at, other[start..end].iter().copied());
            }
            9 => {
                // Invalid UTF-8 and control bytes in a field.
                let at = rng.below(len).min(message.len());
                message.splice(at..at, [0xC3, 0x28, 0xA0, 0xA1, 0x00, 0x07]);
            }
            10 => {
                // Duplicate a segment many times.
                let segments: Vec<&[u8]> = message.split(|b| *b == b'\r').collect();
                let pick = segments[rng.below(segments.len())].to_vec();
                let bound = if rng.chance(5) { 2000 } else { 20 };
                for _ in 0..rng.below(bound) {
                    message.extend_from_slice(&pick);
                    message.push(b'\r');
                }
            }
            _ => {
                // Escape sequences, well-formed and not.
                let at = rng.below(len).min(message.len());
                let escape: &[u8] = [
                    &b"\\X0D0A\\"[..],
                    b"\\X",
                    b"\\.br\\",
                    b"\\C2842\\",
                    b"\\M\\",
                    b"\\Zabc\\",
                    b"\\E\\\\F\\",
                ][rng.below(7)];
                message.splice(at..at, escape.iter().copied());
            }
        }
    }
    message
}

/// Byte range of MSH-`number` (MSH-3 onward), if present.
fn find_field(message: &[u8], number: usize) -> Option<(usize, usize)> {
    let end = message
        .iter()
        .position(|b| *b == b'\r' || *b == b'\n')
        .unwrap_or(message.len());
    let separator = *message.get(3)?;
    let mut field = 1;
    let mut start = 4;
    for (index, byte) in message[..end].iter().enumerate().skip(4) {
        if *byte == separator {
            field += 1;
            if field == number {
                start = index + 1;
            } else if field == number + 1 {
                return Some((start, index));
            }
        }
    }
    (field == number).then_some((start, end))
}

#[derive(Default, Debug)]
struct Tally {
    frames: u64,
    acks: std::collections::BTreeMap<String, u64>,
    closed_without_ack: u64,
    junk_sent: u64,
    bytes: u64,
    slowest_ms: u128,
}

/// The next ACK on `stream` (`pending` keeps bytes read past it), `None` when the server
/// closed the connection.
fn read_ack(
    stream: &mut TcpStream,
    pending: &mut Vec<u8>,
    deadline: Instant,
) -> Result<Option<Vec<u8>>, String> {
    let mut buffer = [0u8; 4096];
    loop {
        if let Some(end) = pending.windows(2).position(|w| w == [0x1C, 0x0D]) {
            let start = pending[..end]
                .iter()
                .position(|b| *b == 0x0B)
                .ok_or("an answer without a start block")?;
            let ack = pending[start + 1..end].to_vec();
            pending.drain(..end + 2);
            return Ok(Some(ack));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no answer and no close within the deadline (a hang)".to_owned());
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|error| error.to_string())?;
        match stream.read(&mut buffer) {
            Ok(0) => return Ok(None),
            Ok(read) => pending.extend_from_slice(&buffer[..read]),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                return Ok(None);
            }
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(error) => return Err(error.to_string()),
        }
    }
}

/// MSA-1 and MSA-2 of a parseable ACK.
fn check_ack(ack: &[u8]) -> Result<(String, String), String> {
    let message = Message::parse(Bytes::copy_from_slice(ack))
        .map_err(|error| format!("the ACK does not parse: {error}"))?;
    let msa = message.segment(b"MSA", 1).ok_or("the ACK has no MSA")?;
    let code = String::from_utf8_lossy(msa.field(1).unwrap_or_default()).into_owned();
    if !["AA", "AE", "AR", "CA", "CE", "CR"].contains(&code.as_str()) {
        return Err(format!("MSA-1 is {code:?}"));
    }
    let control_id = msa.field(2).ok_or("the ACK has no MSA-2")?;
    Ok((code, String::from_utf8_lossy(control_id).into_owned()))
}

fn worker(addr: String, seed: u64, frames: u64, seeds: Vec<Vec<u8>>) -> Result<Tally, String> {
    let mut rng = Rng(seed | 1);
    let mut tally = Tally::default();
    let connect = || -> Result<TcpStream, String> {
        let stream = TcpStream::connect(&addr).map_err(|error| format!("connect: {error}"))?;
        stream
            .set_nodelay(true)
            .map_err(|error| error.to_string())?;
        Ok(stream)
    };
    let mut stream = connect()?;
    let mut pending = Vec::new();
    while tally.frames < frames {
        let message = mutate(&mut rng, &seeds);
        let mut bytes = Vec::with_capacity(message.len() + 8);
        if rng.chance(3) {
            // Junk outside frames: discarded by the server.
            bytes.extend_from_slice(b"\r\nGET / HTTP/1.0\r\n\x1c");
            tally.junk_sent += 1;
        }
        bytes.push(0x0B);
        bytes.extend_from_slice(&message);
        bytes.push(0x1C);
        if !rng.chance(2) {
            bytes.push(0x0D);
        }
        tally.frames += 1;
        tally.bytes += bytes.len() as u64;
        // The probe: a valid message with its own control id, always answered.
        let probe_id = format!("PROBE{seed:x}{}", tally.frames);
        bytes.extend_from_slice(b"\x0bMSH|^~\\&|FUZZ|PROBE|GW|HOSP|20261205120000||ADT^A08|");
        bytes.extend_from_slice(probe_id.as_bytes());
        bytes.extend_from_slice(b"|P|2.5.1\rPID|1||123\r\x1c\r");
        let started = Instant::now();
        if stream.write_all(&bytes).is_err() {
            // Closed by the server after the previous frame (or now): a new connection.
            stream = connect()?;
            pending.clear();
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match read_ack(&mut stream, &mut pending, deadline) {
                Ok(Some(ack)) => {
                    let (code, control_id) = check_ack(&ack).map_err(|why| {
                        format!(
                            "frame {} (seed {seed}): {why}: {:?}",
                            tally.frames,
                            String::from_utf8_lossy(&ack)
                        )
                    })?;
                    if control_id == probe_id {
                        break;
                    }
                    *tally.acks.entry(code).or_default() += 1;
                }
                Ok(None) => {
                    tally.closed_without_ack += 1;
                    stream = connect()?;
                    pending.clear();
                    break;
                }
                Err(why) => {
                    return Err(format!("frame {} (seed {seed}): {why}", tally.frames));
                }
            }
        }
        tally.slowest_ms = tally.slowest_ms.max(started.elapsed().as_millis());
    }
    Ok(tally)
}

#[test]
fn no_crash_no_hang_and_every_answer_a_parseable_ack() {
    let frames: u64 = std::env::var("MFOUNDRY_FUZZ_FRAMES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(5_000);
    let seed: u64 = std::env::var("MFOUNDRY_FUZZ_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |since| since.as_nanos() as u64)
        });
    let connections = 8u64;
    let directory = tempfile::tempdir().expect("tempdir");
    let dir = directory.path();
    std::fs::write(dir.join("gw.yaml"), CONFIG).expect("config");
    std::fs::write(dir.join("key"), [0x5Au8; 32]).expect("key");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mfoundry"))
        .args(["serve", "--config", "gw.yaml"])
        .env_clear()
        .current_dir(dir)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("ADMIN_ADDR", "off")
        .env("DATA_DIR", dir.join("data"))
        .env("LOG_FORMAT", "json")
        .env("ENCRYPTION_KEY_FILE", "key")
        .env("MAX_FRAME_SIZE", "1MiB")
        .env("IDLE_TIMEOUT", "60s")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("mfoundry starts");
    let stderr = child.stderr.take().expect("stderr");
    let (sender, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = sender.send(line);
        }
    });
    let addr = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the server logs its address");
        if let Some(start) = line.find("\"addr\":\"") {
            let rest = &line[start + 8..];
            break rest[..rest.find('"').expect("quote")].to_owned();
        }
    };
    println!("fuzz: seed {seed}, {frames} frames over {connections} connections to {addr}");
    let started = Instant::now();
    let seeds = seeds();
    let workers: Vec<_> = (0..connections)
        .map(|index| {
            let addr = addr.clone();
            let seeds = seeds.clone();
            let share = frames / connections + u64::from(index < frames % connections);
            let seed = seed.wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            std::thread::spawn(move || worker(addr, seed, share, seeds))
        })
        .collect();
    let mut total = Tally::default();
    let mut failures = Vec::new();
    for handle in workers {
        match handle.join().expect("worker thread") {
            Ok(tally) => {
                total.frames += tally.frames;
                total.closed_without_ack += tally.closed_without_ack;
                total.junk_sent += tally.junk_sent;
                total.bytes += tally.bytes;
                total.slowest_ms = total.slowest_ms.max(tally.slowest_ms);
                for (code, count) in tally.acks {
                    *total.acks.entry(code).or_default() += count;
                }
            }
            Err(why) => failures.push(why),
        }
    }
    let alive = child.try_wait().expect("status").is_none();
    let panics: Vec<String> = lines
        .try_iter()
        .filter(|line| line.contains("panicked") || line.contains("\"level\":\"ERROR\""))
        .take(5)
        .collect();
    println!(
        "fuzz: {} frames ({} MiB) in {:.1} s: ACKs {:?}, closed without an ACK {}, junk runs {}, slowest answer {} ms, process alive {alive}",
        total.frames,
        total.bytes >> 20,
        started.elapsed().as_secs_f64(),
        total.acks,
        total.closed_without_ack,
        total.junk_sent,
        total.slowest_ms
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .expect("signal");
    let status = child.wait().expect("exits");
    assert!(failures.is_empty(), "{failures:?}");
    assert!(alive, "the gateway died during the campaign");
    assert!(
        status.success(),
        "the gateway exits cleanly after the campaign: {status}"
    );
    assert!(panics.is_empty(), "{panics:?}");
    assert!(
        total.acks.values().sum::<u64>() > total.frames / 3,
        "{total:?}"
    );
}
