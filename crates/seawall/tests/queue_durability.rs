//! Nothing acknowledged is lost: the `seawall` binary takes jobs from many clients at once and is
//! killed with SIGKILL at random moments, 20 times, then started again; every job it answered 202
//! must reach the destination at least once (jobs cut mid-delivery are delivered again).
//! `SEAWALL_KILL_ROUNDS` runs more rounds (bench/queue.sh runs 200).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Producers writing at once.
const PRODUCERS: usize = 16;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A destination that records the `Idempotency-Key` of every call and answers 200.
fn destination(keys: Arc<Mutex<HashSet<String>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let keys = Arc::clone(&keys);
            std::thread::spawn(move || serve_destination(stream, &keys));
        }
    });
    addr
}

fn serve_destination(stream: TcpStream, keys: &Mutex<HashSet<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let Some((head, _body)) = read_message(&mut reader) else { return };
        if let Some(key) = field(&head, "idempotency-key") {
            keys.lock().unwrap().insert(key);
        }
        if writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_err() {
            return;
        }
    }
}

/// One HTTP/1.1 message with a `Content-Length` body: its head and body.
fn read_message(reader: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let length: usize = field(&head, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((head, body))
}

fn field(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// A producer: posts jobs on a keep-alive connection, reconnecting while the gateway is down;
/// every 202 it reads is an acknowledged job id.
fn produce(gateway: SocketAddr, acked: &Mutex<Vec<String>>, stop: &AtomicBool, sent: &AtomicU64) {
    while !stop.load(SeqCst) {
        let Ok(stream) = TcpStream::connect_timeout(&gateway, Duration::from_millis(200)) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        while !stop.load(SeqCst) {
            let n = sent.fetch_add(1, SeqCst);
            let body = format!("{{\"n\":{n}}}");
            let request = format!(
                "POST /emails HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if writer.write_all(request.as_bytes()).is_err() {
                break;
            }
            let Some((head, body)) = read_message(&mut reader) else { break };
            if head.starts_with("HTTP/1.1 202") {
                let text = String::from_utf8_lossy(&body);
                let id = text.split("\"job\":\"").nth(1).and_then(|r| r.split('"').next()).unwrap();
                acked.lock().unwrap().push(id.to_string());
            }
        }
    }
}

struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the gateway; its log goes to `seawall.log` beside its configuration (shown when the
/// test fails).
fn start(config: &std::path::Path, listen: SocketAddr) -> Gateway {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.with_file_name("seawall.log"))
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_seawall"))
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let gateway = Gateway(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&listen, Duration::from_millis(100)).is_err() {
        assert!(Instant::now() < deadline, "the gateway did not start listening");
        std::thread::sleep(Duration::from_millis(5));
    }
    gateway
}

#[test]
fn every_acknowledged_job_is_delivered_across_kill_9() {
    kill_9_rounds("embedded", "data_dir = \"data\"\n");
}

#[test]
fn every_acknowledged_job_is_delivered_across_kill_9_with_redis_streams() {
    let up = TcpStream::connect_timeout(&"127.0.0.1:6379".parse().unwrap(), Duration::from_secs(1))
        .is_ok();
    if !up {
        let required = std::env::var("SEAWALL_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
        assert!(!required, "Redis is not running on 127.0.0.1:6379 (SEAWALL_REQUIRE_SERVICES=1)");
        eprintln!("skipped: Redis is not running on 127.0.0.1:6379");
        return;
    }
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let prefix = format!("seawall-kill9:{}:{nanos}:", std::process::id());
    // A killed instance's leases are taken over after `lease`.
    let backend = format!(
        "backend = \"redis\"\nredis = \"redis://127.0.0.1:6379\"\nredis_prefix = \"{prefix}\"\nlease = \"500ms\"\n"
    );
    kill_9_rounds("redis", &backend);
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!("redis-cli --scan --pattern '{prefix}*' | xargs -r redis-cli DEL > /dev/null"))
        .status();
}

/// Runs the kill rounds against a queue whose `[queue]` keys are `backend`.
fn kill_9_rounds(name: &str, backend: &str) {
    let rounds: usize =
        std::env::var("SEAWALL_KILL_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(20);
    let keys = Arc::new(Mutex::new(HashSet::new()));
    let dest = destination(Arc::clone(&keys));
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = std::env::temp_dir().join(format!("seawall-kill9-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("seawall.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{listen}\"\nadmin = \"127.0.0.1:0\"\nworkers = 2\n\
             [overload]\ncpu = \"off\"\n\
             [queue]\n{backend}\
             [upstreams.mailer]\nservers = [\"{dest}\"]\n\
             [[routes]]\nname = \"emails\"\npath_prefix = \"/emails\"\nqueue = {{ topic = \"emails\", deliver_to = \"mailer\" }}\n"
        ),
    )
    .unwrap();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|_| {
            let (acked, stop, sent) = (Arc::clone(&acked), Arc::clone(&stop), Arc::clone(&sent));
            std::thread::spawn(move || produce(listen, &acked, &stop, &sent))
        })
        .collect();
    // Random moments: a different load time each round, from the clock's low bits.
    let mut seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as u64
            | 1;
    for _ in 0..rounds {
        let gateway = start(&config, listen);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(20 + seed % 250));
        drop(gateway); // SIGKILL, then reaped.
    }
    let _last = start(&config, listen);
    stop.store(true, SeqCst);
    for p in producers {
        p.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= rounds * 10,
        "too few jobs acknowledged to mean anything: {}",
        acked.len()
    );
    // The backlog takes its time (a debug build, hundreds of thousands of jobs): the test fails
    // when deliveries stop making progress for 30 s, not at a fixed time.
    let mut deadline = Instant::now() + Duration::from_secs(30);
    let mut last_seen = 0;
    loop {
        let (missing, seen): (Vec<&String>, usize) = {
            let delivered = keys.lock().unwrap();
            (acked.iter().filter(|id| !delivered.contains(*id)).collect(), delivered.len())
        };
        if missing.is_empty() {
            break;
        }
        if seen > last_seen {
            last_seen = seen;
            deadline = Instant::now() + Duration::from_secs(30);
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("seawall.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "{} of {} acknowledged jobs not delivered (none for 30 s) after {rounds} kills, e.g. {:?}; the last lines of the log:\n{}",
                missing.len(),
                acked.len(),
                &missing[..missing.len().min(5)],
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
