//! The access log (`[log] access_log = true`): one JSON line per request, closed by
//! [`crate::policy::Account`]. Lines go to the `tracing` output (target `seawall::access`), or to
//! `log.access_log_file` through a bounded channel to a writer thread: a worker never waits on
//! the disk — a full channel drops the line and counts it
//! (`seawall_access_log_dropped_total`). The file is reopened on SIGUSR1 (after logrotate moved
//! it), see [`Sink::reopen`].
//!
//! Nothing here runs when the log is off: the engines take the request's fields
//! ([`RequestLine`]) only for a log that is on.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Registry;
use crate::request::RequestView;

/// Lines waiting for the writer thread at most; more are dropped (and counted).
const QUEUE: usize = 16 * 1024;

/// The most of a user agent or query kept in a line.
const MAX_FIELD: usize = 1024;

/// What the access log keeps of a request, taken as it is parsed (only when the log is on).
#[derive(Debug, Default)]
pub struct RequestLine {
    pub method: String,
    pub path: String,
    /// The query string, when `log.access_log_query` is on.
    pub query: Option<String>,
    pub protocol: &'static str,
    pub user_agent: Option<String>,
    /// The request's bytes as received: its head, and its body as declared.
    pub bytes_received: u64,
}

impl RequestLine {
    /// The line of a parsed request (`head_len`: the head's size on the wire, where known).
    pub fn of(view: &RequestView<'_>, with_query: bool, head_len: u64) -> Self {
        let text = clip;
        let query = view.target.iter().position(|&b| b == b'?').map(|at| &view.target[at + 1..]);
        RequestLine {
            method: view.method.as_str().to_owned(),
            path: String::from_utf8_lossy(view.path).into_owned(),
            query: query.filter(|_| with_query).map(text),
            protocol: protocol(view.version),
            user_agent: view.headers.first("user-agent").map(text),
            bytes_received: head_len + view.declared_length().unwrap_or(0),
        }
    }

    /// The line of an HTTP/2 request, before its checks (its head's size on the wire is not
    /// known: HPACK; its body counts as declared).
    pub fn of_parts(parts: &http::request::Parts, with_query: bool) -> Self {
        let headers = &parts.headers;
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        RequestLine {
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().filter(|_| with_query).map(|q| clip(q.as_bytes())),
            protocol: protocol(parts.version),
            user_agent: headers.get(http::header::USER_AGENT).map(|v| clip(v.as_bytes())),
            bytes_received: declared.unwrap_or(0),
        }
    }

    /// The line of a request whose head could not be read.
    pub fn unparsed() -> Self {
        RequestLine { method: "-".into(), path: "-".into(), ..RequestLine::default() }
    }
}

/// At most [`MAX_FIELD`] bytes of a client's text, lossily.
fn clip(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_FIELD)]).into_owned()
}

fn protocol(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/3.0",
    }
}

/// Milliseconds with three decimals (microsecond resolution).
pub fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// Where the lines go.
pub enum Sink {
    /// The `tracing` output, target `seawall::access`.
    Tracing,
    File(FileSink),
}

/// The channel to the writer thread of a file destination.
pub struct FileSink {
    path: PathBuf,
    queue: SyncSender<Message>,
    registry: Arc<Registry>,
}

enum Message {
    Line(String),
    /// Reopen the file by its path (after a rotation); answer when done.
    Reopen(SyncSender<io::Result<()>>),
    /// Answer once every line before this one is written out.
    Flush(SyncSender<()>),
}

impl Sink {
    /// The destination `log` names; a file is opened (created, appended to) now, so that a path
    /// that cannot be written fails the start.
    pub fn open(log: &seawall_config::Log, registry: &Arc<Registry>) -> io::Result<Sink> {
        let Some(path) = log.access_log_file.as_ref() else { return Ok(Sink::Tracing) };
        let file = open_file(path)?;
        let (queue, lines) = mpsc::sync_channel(QUEUE);
        let name = "seawall-access-log".to_string();
        let writer_path = path.clone();
        std::thread::Builder::new()
            .name(name)
            .spawn(move || write_lines(writer_path, file, lines))?;
        Ok(Sink::File(FileSink { path: path.clone(), queue, registry: Arc::clone(registry) }))
    }

    /// Hands a line to the writer thread without waiting; a full queue drops it (counted).
    pub fn send(&self, line: String) {
        let Sink::File(file) = self else { return };
        match file.queue.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                file.registry.access_log_dropped.add(1);
            }
        }
    }

    /// Reopens the file by its path (SIGUSR1, after logrotate renamed it): lines sent after this
    /// returns go to the new file. Blocks until the writer has done it (call it off the workers).
    pub fn reopen(&self) -> io::Result<()> {
        let Sink::File(file) = self else { return Ok(()) };
        let (done, wait) = mpsc::sync_channel(1);
        file.queue.send(Message::Reopen(done)).map_err(|_| gone())?;
        let reopened = wait.recv().map_err(|_| gone())?;
        if reopened.is_ok() {
            tracing::info!(path = %file.path.display(), "access log reopened");
        }
        reopened
    }

    /// Waits until every line sent so far is written out (at shutdown).
    pub fn flush(&self) {
        let Sink::File(file) = self else { return };
        let (done, wait) = mpsc::sync_channel(1);
        if file.queue.send(Message::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(5));
        }
    }
}

fn gone() -> io::Error {
    io::Error::other("the access log writer has stopped")
}

fn open_file(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// The writer thread: writes lines as they come, flushing whenever the queue is empty; ends when
/// the gateway (every sender) is gone.
fn write_lines(path: PathBuf, file: File, lines: Receiver<Message>) {
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    let mut failing = false;
    while let Ok(first) = lines.recv() {
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                Message::Line(line) => {
                    let written =
                        out.write_all(line.as_bytes()).and_then(|()| out.write_all(b"\n"));
                    if let Err(e) = written {
                        if !std::mem::replace(&mut failing, true) {
                            tracing::error!(path = %path.display(), error = %e, "cannot write the access log");
                        }
                    }
                }
                Message::Reopen(done) => {
                    let _ = out.flush();
                    let reopened = open_file(&path).map(|file| {
                        out = BufWriter::with_capacity(64 * 1024, file);
                        failing = false;
                    });
                    let _ = done.send(reopened);
                }
                Message::Flush(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
            }
            next = lines.try_recv().ok();
        }
        let _ = out.flush();
    }
}

/// Upstream times of the attempt that answered, for the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Opening the connection (`None`: a pooled one was used).
    pub connect: Option<Duration>,
    /// From the request's start to the upstream's response head.
    pub response: Option<Duration>,
}

/// The current time as RFC 3339 in UTC, to the millisecond (`2026-12-01T18:50:22.123Z`).
pub fn now_rfc3339() -> String {
    let since =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    seawall_core::civil::rfc3339(since)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_keep_three_decimals() {
        assert_eq!(millis(Duration::from_nanos(12_345_678)), 12.345);
    }
}
