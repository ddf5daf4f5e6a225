//! Redis for the cache tests: the one on 127.0.0.1:6379 (skipped, with a word, when it is not
//! there — unless SEAWALL_REQUIRE_SERVICES=1), a key prefix no other run shares, and a server of
//! a test's own on a free port, to stop or load at will.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Whether services must be there (CI): then a missing one fails the test.
pub fn services_required() -> bool {
    std::env::var("SEAWALL_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Whether Redis answers at `addr`; without it the test is skipped (or fails when services are
/// required).
pub fn redis_at(addr: &str) -> bool {
    let up = std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(1))
        .is_ok();
    if !up {
        assert!(
            !services_required(),
            "Redis is not running on {addr} (SEAWALL_REQUIRE_SERVICES=1)"
        );
        eprintln!("skipped: Redis is not running on {addr}");
    }
    up
}

/// A key prefix no other run shares.
pub fn fresh_prefix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    format!("seawall-test:{}:{}:", std::process::id(), nanos.as_nanos())
}

/// A Redis server of the test's own (DEBUG allowed), on a free port; killed when dropped.
pub struct OwnRedis {
    child: Child,
    pub addr: String,
}

impl OwnRedis {
    pub fn start() -> Option<OwnRedis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--enable-debug-command", "yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = spawned else {
            assert!(
                !services_required(),
                "redis-server is not installed (SEAWALL_REQUIRE_SERVICES=1)"
            );
            eprintln!("skipped: redis-server is not installed");
            return None;
        };
        let addr = format!("127.0.0.1:{port}");
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(OwnRedis { child, addr })
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
