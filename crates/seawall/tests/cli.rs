//! The `seawall` binary as an operator uses it: check, run with signals and file reloads, demo.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The CPU does not drive overload levels in these files: tests running side by side keep the
/// machine busy, and a gateway shedding its requests would fail them for the wrong reason.
const QUIET: &str = "[overload]\ncpu = \"off\"\n";

fn seawall() -> Command {
    Command::new(env!("CARGO_BIN_EXE_seawall"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn temp_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("seawall-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("seawall.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A plain HTTP/1.1 exchange; `None` while nothing listens.
fn http(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the gateway if a test fails before it exits, so no process outlives the test.
struct Running(Option<Child>);

impl Running {
    fn child(&self) -> &Child {
        self.0.as_ref().unwrap()
    }
    fn take(mut self) -> Child {
        self.0.take().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success();
    assert!(ok);
}

fn exit_code(mut child: Child) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(Instant::now() < deadline, "seawall did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn version_and_help() {
    let out = seawall().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("seawall "));
    let out = seawall().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "check", "demo"] {
        assert!(help.contains(cmd), "{help}");
    }
}

#[test]
fn check_accepts_the_example_and_lists_every_error() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/seawall.toml");
    let out = seawall().args(["check", "--config", example]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let bad = temp_config("bad", "[server]\nlisten = \"nowhere\"\n\n[upstreams.app]\nservers = [\"127.0.0.1:1\"]\ntimeout = \"soon\"\n");
    let out = seawall().args(["check", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = bad.display().to_string();
    assert!(err.contains(&format!("{file}:2:10: server.listen: expected an address")), "{err}");
    assert!(
        err.contains(&format!("{file}:6:11: upstreams.app.timeout: expected a duration")),
        "{err}"
    );
    assert!(err.contains("2 error(s)"), "{err}");

    // Valid but not quite meant: warnings, and success.
    let odd = temp_config(
        "odd",
        "[upstreams.app]\nservers = [\"127.0.0.1:1\"]\ntimeout = \"5s\"\ntotal_timeout = \"2s\"\n",
    );
    let out = seawall().args(["check", "--config"]).arg(&odd).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = odd.display().to_string();
    assert!(
        err.contains(&format!("warning: {file}:4:17: upstreams.app.total_timeout: 1 attempt(s)")),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 warning(s)"));

    let out = seawall().args(["check", "--config", "/nonexistent/seawall.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the file"));
}

#[test]
fn check_prints_every_error_in_line_order() {
    let text = "[server]\nlisten = \"127.0.0.1\"\nworkers = \"four\"\n\n[upstreams.app]\nservers = [\"127.0.0.1:1\"]\ntimout = \"5s\"\nbalance = \"fastest\"\n\n[[routes]]\nupstream = \"app\"\npriority = 1\n";
    let bad = temp_config("many", text);
    let out = seawall().args(["check", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = bad.display().to_string();
    let prefixes: Vec<&str> =
        err.lines().map(|l| l.strip_prefix(file.as_str()).unwrap_or(l)).collect();
    let expected = [
        ":2:10: server.listen: expected an address",
        ":3:11: server.workers: invalid type: string \"four\"",
        ":7:1: upstreams.app.timout: unknown field `timout`, expected one of",
        ":8:11: upstreams.app.balance: expected round_robin",
        ":12:12: routes[0].priority: invalid type: integer `1`, expected a string",
        "5 error(s)",
    ];
    assert_eq!(prefixes.len(), expected.len(), "{err}");
    for (line, want) in prefixes.iter().zip(expected) {
        assert!(line.starts_with(want), "{line:?} does not start with {want:?}\n{err}");
    }
    assert!(prefixes[2].ends_with("; did you mean `timeout`?"), "{err}");
}

#[test]
fn run_reloads_on_sighup_and_on_file_change_and_drains_on_sigterm() {
    let (listen, admin, origin) = (free_port(), free_port(), free_port());
    let config = |path: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{listen}\"\nadmin = \"127.0.0.1:{admin}\"\nworkers = 1\n\
             {QUIET}[upstreams.app]\nservers = [\"127.0.0.1:{origin}\"]\n[[routes]]\nname = \"r\"\npath = \"{path}\"\nupstream = \"app\"\n"
        )
    };
    let path = temp_config("run", &config("/first"));
    let log_path = path.with_extension("log");
    let log = std::fs::File::create(&log_path).unwrap();
    let running = Running(Some(
        seawall()
            .args(["run", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    ));
    let child = running.child();
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let gw: SocketAddr = format!("127.0.0.1:{listen}").parse().unwrap();
    wait_for("admin up", || http(admin_addr, "GET", "/readyz").is_some_and(|(s, _)| s == 200));
    let route_path =
        || http(admin_addr, "GET", "/api/v1/state").map(|(_, b)| b).unwrap_or_default();
    assert!(route_path().contains("\"/first\""));
    // No origin listens: the route answers 502 problem, proving it is live.
    assert_eq!(http(gw, "GET", "/first").unwrap().0, 502);

    std::fs::write(&path, config("/second")).unwrap();
    signal(child, "-HUP");
    wait_for("reload by SIGHUP or file watch", || route_path().contains("\"/second\""));

    // An invalid file is refused; the running configuration stays.
    std::fs::write(&path, "[server\n").unwrap();
    signal(child, "-HUP");
    wait_for("reload failure counted", || {
        http(admin_addr, "GET", "/metrics")
            .is_some_and(|(_, b)| !b.contains("seawall_config_reload_failures_total 0"))
    });
    assert!(route_path().contains("\"/second\""));

    // Without a signal, a changed file is picked up by the watcher.
    std::fs::write(&path, config("/third")).unwrap();
    wait_for("reload by file watch", || route_path().contains("\"/third\""));

    signal(child, "-TERM");
    assert_eq!(exit_code(running.take()), 0);
    // A log that is not a terminal gets plain text: no colour codes.
    let logged = std::fs::read_to_string(&log_path).unwrap();
    assert!(logged.contains("configuration reloaded"), "{logged}");
    assert!(!logged.contains('\u{1b}'), "colour codes in a file: {logged:?}");
}

#[test]
fn demo_serves_through_the_gateway_and_stops_on_ctrl_c() {
    let (listen, admin, o1, o2) = (free_port(), free_port(), free_port(), free_port());
    let path = temp_config(
        "demo",
        &format!(
            "[server]\nlisten = \"127.0.0.1:{listen}\"\nadmin = \"127.0.0.1:{admin}\"\n\
             {QUIET}[upstreams.app]\nservers = [\"127.0.0.1:{o1}\", \"127.0.0.1:{o2}\"]\n[[routes]]\nupstream = \"app\"\n"
        ),
    );
    let mut running = Running(Some(
        seawall()
            .args(["demo", "--config"])
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let gw: SocketAddr = format!("127.0.0.1:{listen}").parse().unwrap();
    wait_for("demo up", || http(gw, "GET", "/healthz").is_some_and(|(s, _)| s == 200));
    let (status, body) = http(gw, "GET", "/slow?ms=20").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"slept_ms\":20"), "{body}");
    assert_eq!(http(gw, "GET", "/fail?rate=1").unwrap().0, 500);
    assert_eq!(http(gw, "GET", "/fail?rate=0").unwrap().0, 200);
    assert_eq!(http(gw, "GET", "/status/418").unwrap().0, 418);
    let (status, body) = http(gw, "GET", "/limited?retry_after=7").unwrap();
    assert_eq!(status, 429);
    assert!(body.contains("\"retry_after\":7"), "{body}");
    // The origin drops the connection without answering: the gateway says so.
    assert_eq!(http(gw, "GET", "/reset").unwrap().0, 502);
    signal(running.child(), "-INT");
    let mut printed = String::new();
    let stdout = running.0.as_mut().unwrap().stdout.take().unwrap();
    { stdout }.read_to_string(&mut printed).unwrap();
    assert!(printed.contains(&format!("http://127.0.0.1:{listen}")), "{printed}");
    assert_eq!(exit_code(running.take()), 0);
}
