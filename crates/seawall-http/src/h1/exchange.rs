//! The `proxy` action in the HTTP/1.1 engine: pick a server, send the request on a pooled raw
//! connection (or a new one), read the response head within the upstream's `timeout`, and relay
//! the body to the client as it comes. Same choices and failures as [`crate::proxy`]: a server
//! that cannot be reached is skipped for another, a pooled connection the server had closed is
//! replaced once, and every other failure is a 502, 503 or 504 problem response.

use std::io::IoSlice;
use std::rc::Rc;

use seawall_config::Route;
use seawall_core::clock::{duration_ms, now_ms};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::chunked::{chunk_start, ChunkedScanner, CHUNK_END, LAST_CHUNK};
use super::head::{parse_response, write_host_and_end, BodyKind, ResponseHead, UpstreamHead};
use super::session::AdvanceTo as _;
use super::session::{make_room, read_within, within, write_all_vectored, Exchange, Session};
use crate::metrics::UpstreamOutcome;
use crate::problem::Reason;
use crate::proxy::{choose, Chosen};
use crate::snapshot::Snapshot;
use crate::upstream::pool::{Inflight, RawConn, WorkerPools};
use crate::upstream::{PickContext, UpstreamGroup};

/// Room made in the client buffer while a request body streams through it.
const BODY_READ: usize = 64 * 1024;

/// A response head larger than this is refused (502).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// One try on one connection.
enum Attempt {
    Done(Exchange),
    /// A pooled connection turned out to be closed before anything came back: try a new one.
    Stale,
}

/// Where relaying a response body broke.
enum Broken {
    Client(std::io::Error),
    Upstream,
}

/// The request as this try sees it.
struct Sending<'a> {
    group: &'a UpstreamGroup,
    upstream: usize,
    index: usize,
    pooled: bool,
    /// Bytes of the body already in the client buffer (sent with the head).
    body_here: usize,
    close: bool,
}

impl Session {
    /// Forwards the current request to upstream `upstream`.
    pub(super) async fn forward(
        &mut self,
        snapshot: &Snapshot,
        route: &Route,
        upstream: usize,
        close: bool,
    ) -> Exchange {
        let group = &snapshot.upstreams[upstream];
        let limit =
            route.max_body_size.unwrap_or(snapshot.config.server.max_body_size).unwrap_or(u64::MAX);
        if self.head.content_length > limit {
            let detail = format!("the request body exceeds {limit} bytes");
            return self.fail(Reason::BodyTooLarge, &detail, close, None).await;
        }
        let host_is_server = !route.preserve_host || self.head.host(&self.buf).is_none();
        self.head.write_upstream(&self.buf, &mut self.out, self.peer.ip(), host_is_server);
        let head_end = self.out.len();
        let buffered = (self.buf.len() - self.head.len) as u64;
        let body_here = buffered.min(self.head.content_length) as usize;
        let worker = Rc::clone(&self.worker);
        let mut tried: Vec<usize> = Vec::new();
        let mut fresh_only = false;
        loop {
            let chosen = {
                let view = self.head.view(&self.buf);
                let cx = PickContext {
                    headers: &view,
                    client_ip: self.peer.ip(),
                    now_ms: self.clock_ms,
                };
                choose(
                    &worker,
                    group,
                    &cx,
                    &mut tried,
                    fresh_only,
                    WorkerPools::checkout_raw,
                    |address, timeout| worker.pools.connect_raw(address, timeout),
                )
                .await
            };
            let Chosen { index, conn, pooled, inflight } = match chosen {
                Ok(chosen) => chosen,
                Err((reason, detail)) => return self.fail(reason, &detail, close, None).await,
            };
            let server = &group.servers[index];
            self.out.truncate(head_end);
            write_host_and_end(&mut self.out, host_is_server.then_some(server.name.as_str()));
            let sending = Sending { group, upstream, index, pooled, body_here, close };
            match self.attempt(&sending, conn, inflight).await {
                Attempt::Done(exchange) => return exchange,
                Attempt::Stale => fresh_only = true,
            }
        }
    }

    /// Sends the request on `conn` and relays the answer.
    async fn attempt(&mut self, s: &Sending<'_>, mut conn: RawConn, inflight: Inflight) -> Attempt {
        let Sending { group, index, .. } = *s;
        let timeout = group.config.timeout;
        let name = &group.config.name;
        let at = Some((s.upstream, index));
        if !s.pooled {
            // Connecting took time of its own; the timeout starts with the sending.
            self.tick();
        }
        self.timer.set(self.clock + timeout);

        let body = &self.buf[self.head.len..self.head.len + s.body_here];
        let mut slices = [IoSlice::new(&self.out), IoSlice::new(body)];
        match within(&mut self.timer, write_all_vectored(&mut conn.stream, &mut slices)).await {
            Some(Ok(())) => {}
            Some(Err(_)) if s.pooled => return Attempt::Stale,
            Some(Err(e)) => {
                let detail = format!("upstream {name:?} failed: {e}");
                return Attempt::Done(self.upstream_error(s, &detail, s.close).await);
            }
            None => return Attempt::Done(self.timed_out(s).await),
        }
        let whole_body_here = s.body_here as u64 == self.head.content_length;
        if !whole_body_here {
            if let Some(failed) = self.stream_body(s, &mut conn).await {
                return Attempt::Done(failed);
            }
        }

        // The response head, skipping interim (1xx) responses.
        let retry_allowed = s.pooled && whole_body_here && self.head.method.is_idempotent();
        let mut received = false;
        let head = loop {
            if !conn.buf.is_empty() {
                // A drain that began while the upstream worked still gets its `Connection: close`.
                let close = s.close || self.worker.drain.fired();
                match parse_response(&conn.buf, &self.head.method, close, &mut self.out) {
                    Ok(UpstreamHead::Final(head)) => break head,
                    Ok(UpstreamHead::Interim(len)) => {
                        conn.buf.advance_to(len);
                        continue;
                    }
                    Ok(UpstreamHead::Partial) if conn.buf.len() <= MAX_RESPONSE_HEAD => {}
                    Ok(UpstreamHead::Partial) => {
                        let detail = format!("upstream {name:?} sent a response head too large");
                        return Attempt::Done(self.upstream_error(s, &detail, s.close).await);
                    }
                    Err(e) => {
                        let detail = format!("upstream {name:?} failed: {e}");
                        return Attempt::Done(self.upstream_error(s, &detail, s.close).await);
                    }
                }
            }
            match read_within(&mut conn.stream, &mut conn.buf, &mut self.timer).await {
                Some(Ok(n)) if n > 0 => received = true,
                Some(_) if retry_allowed && !received => return Attempt::Stale,
                Some(result) => {
                    let cause = match result {
                        Err(e) => e.to_string(),
                        Ok(_) => "connection closed before the response was complete".into(),
                    };
                    let detail = format!("upstream {name:?} failed: {cause}");
                    return Attempt::Done(self.upstream_error(s, &detail, s.close).await);
                }
                None => return Attempt::Done(self.timed_out(s).await),
            }
        };
        let outcome =
            if head.status >= 500 { UpstreamOutcome::Http5xx } else { UpstreamOutcome::Ok };
        group.record(index, outcome, self.clock_ms);
        self.consume_request();

        let relayed = self.relay_body(&mut conn, &head).await;
        let mut exchange = Exchange {
            status: head.status,
            upstream: at,
            reason: None,
            keep_open: !head.close_client,
            written: Ok(()),
        };
        match relayed {
            Ok(true) => {
                let expires = self.clock_ms + duration_ms(group.config.pool.idle_timeout);
                let server_id = group.servers[index].id;
                self.worker.pools.checkin_raw(server_id, conn, group.config.pool.max_idle, expires);
            }
            Ok(false) => {}
            Err(Broken::Upstream) => {
                tracing::debug!(upstream = %name, "upstream broke off a response body");
                group.record(index, UpstreamOutcome::Error, now_ms());
                exchange.keep_open = false;
            }
            Err(Broken::Client(e)) => exchange.written = Err(e),
        }
        drop(inflight);
        Attempt::Done(exchange)
    }

    /// The upstream did not answer within its `timeout`: recorded, and answered 504.
    async fn timed_out(&mut self, s: &Sending<'_>) -> Exchange {
        s.group.record(s.index, UpstreamOutcome::Timeout, now_ms());
        let config = &s.group.config;
        let detail =
            format!("upstream {:?} did not answer within {:?}", config.name, config.timeout);
        self.fail(Reason::UpstreamTimeout, &detail, s.close, Some((s.upstream, s.index))).await
    }

    /// The upstream broke the exchange: recorded as an error, and answered 502.
    async fn upstream_error(&mut self, s: &Sending<'_>, detail: &str, close: bool) -> Exchange {
        s.group.record(s.index, UpstreamOutcome::Error, now_ms());
        self.fail(Reason::UpstreamError, detail, close, Some((s.upstream, s.index))).await
    }

    /// Sends the rest of a request body that was not in the buffer with the head, as the client
    /// sends it. `Some` ends the exchange (the client went away, or the upstream failed).
    async fn stream_body(&mut self, s: &Sending<'_>, conn: &mut RawConn) -> Option<Exchange> {
        let mut remaining = self.head.content_length - s.body_here as u64;
        self.head.content_length = s.body_here as u64;
        self.consume_request();
        // Larger reads for a body than for heads: fewer system calls per megabyte.
        self.buf.reserve(BODY_READ);
        while remaining > 0 {
            match read_within(&mut self.stream, &mut self.buf, &mut self.timer).await {
                Some(Ok(n)) if n > 0 => {}
                // The client went away or stalled past the deadline: nothing to answer.
                _ => {
                    return Some(Exchange {
                        status: 408,
                        upstream: Some((s.upstream, s.index)),
                        reason: None,
                        keep_open: false,
                        written: Ok(()),
                    })
                }
            }
            let n = self.buf.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
            let written = within(&mut self.timer, conn.stream.write_all(&self.buf[..n])).await;
            if !matches!(written, Some(Ok(()))) {
                let detail =
                    format!("upstream {:?} stopped reading the request body", s.group.config.name);
                // The rest of the body is unread: the connection must close.
                return Some(self.upstream_error(s, &detail, true).await);
            }
            self.buf.advance_to(n);
            remaining -= n as u64;
        }
        None
    }

    /// Writes the response head (in `self.out`) and relays the body; `Ok(true)` when the upstream
    /// connection can be reused.
    async fn relay_body(
        &mut self,
        conn: &mut RawConn,
        head: &ResponseHead,
    ) -> Result<bool, Broken> {
        let first = &conn.buf[head.len..];
        let client = &mut self.stream;
        match head.body {
            BodyKind::Empty => {
                client.write_all(&self.out).await.map_err(Broken::Client)?;
                Ok(head.keep_alive && first.is_empty())
            }
            BodyKind::Length(len) => {
                let take = first.len().min(usize::try_from(len).unwrap_or(usize::MAX));
                let mut extra = first.len() > take;
                let mut slices = [IoSlice::new(&self.out), IoSlice::new(&first[..take])];
                write_all_vectored(client, &mut slices).await.map_err(Broken::Client)?;
                let mut remaining = len - take as u64;
                if remaining > 0 {
                    self.head_sent = Some(Instant::now());
                }
                while remaining > 0 {
                    let n = read_upstream(conn).await?;
                    let take = n.min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    extra |= n > take;
                    client.write_all(&conn.buf[..take]).await.map_err(Broken::Client)?;
                    remaining -= take as u64;
                }
                Ok(head.keep_alive && !extra)
            }
            BodyKind::Chunked => {
                let mut scanner = ChunkedScanner::default();
                let used = scanner.feed(first).map_err(|_| Broken::Upstream)?;
                let mut extra = used < first.len();
                let mut slices = [IoSlice::new(&self.out), IoSlice::new(&first[..used])];
                write_all_vectored(client, &mut slices).await.map_err(Broken::Client)?;
                if !scanner.is_done() {
                    self.head_sent = Some(Instant::now());
                }
                while !scanner.is_done() {
                    let n = read_upstream(conn).await?;
                    let used = scanner.feed(&conn.buf[..n]).map_err(|_| Broken::Upstream)?;
                    extra |= used < n;
                    client.write_all(&conn.buf[..used]).await.map_err(Broken::Client)?;
                }
                Ok(head.keep_alive && !extra)
            }
            BodyKind::UntilClose => {
                client.write_all(&self.out).await.map_err(Broken::Client)?;
                self.head_sent = Some(Instant::now());
                if !first.is_empty() {
                    write_chunk(client, first).await?;
                }
                loop {
                    conn.buf.clear();
                    make_room(&mut conn.buf);
                    match conn.stream.read_buf(&mut conn.buf).await {
                        Ok(0) => break,
                        Ok(n) => write_chunk(client, &conn.buf[..n]).await?,
                        Err(_) => return Err(Broken::Upstream),
                    }
                }
                client.write_all(LAST_CHUNK).await.map_err(Broken::Client)?;
                Ok(false)
            }
        }
    }
}

/// Reads the next piece of a response body into the connection's buffer (from its start).
async fn read_upstream(conn: &mut RawConn) -> Result<usize, Broken> {
    conn.buf.clear();
    make_room(&mut conn.buf);
    match conn.stream.read_buf(&mut conn.buf).await {
        Ok(0) | Err(_) => Err(Broken::Upstream),
        Ok(n) => Ok(n),
    }
}

/// Writes `data` to the client as one chunk.
async fn write_chunk(client: &mut tokio::net::TcpStream, data: &[u8]) -> Result<(), Broken> {
    let mut line = Vec::with_capacity(20);
    chunk_start(&mut line, data.len());
    let mut slices = [IoSlice::new(&line), IoSlice::new(data), IoSlice::new(CHUNK_END)];
    write_all_vectored(client, &mut slices).await.map_err(Broken::Client)
}
