//! The `proxy` action in the HTTP/1.1 engine: the request goes through the engine-neutral upstream
//! call ([`crate::proxy::forward`]) with the client's body read from this connection
//! ([`ClientBody`]), and the answer is relayed as it comes — passed through unchanged for an
//! HTTP/1.1 client, re-chunked or decoded where the client needs it — with the client watched
//! (an idempotent request whose client leaves is cut) and every write bounded by `send_timeout`.

use std::io::IoSlice;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::session::{write_within, After, Facts, Session};
use crate::chunked::{chunk_line, ChunkedScanner, CHUNK_END, LAST_CHUNK};
use crate::io::{make_room, within, Transport};
use crate::policy::{body_limit, Permit, Served};
use crate::problem::{Reason, Refusal};
use crate::proxy::{self, BodyError, Downstream, Forward, Forwarded, Gone, UpstreamResponse};
use crate::request::BodyFraming;
use crate::response::{self, ClientBody as Relay, Http1Client, ResponseView};
use crate::timer::LazyTimer;
use crate::upstream::pool::RawConn;
use crate::worker::Worker;

/// Room made in the client buffer while a request body streams through it.
const BODY_READ: usize = 64 * 1024;

/// The 100 Continue sent before a body the client holds back until asked.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl<S: Transport> Session<S> {
    /// Forwards the current request to upstream `upstream` and relays the answer.
    pub(super) async fn proxy(
        &mut self,
        permit: &Permit,
        upstream: usize,
        facts: Facts,
        cache: Option<&mut crate::cache::Ticket>,
    ) -> (Served, After) {
        let snapshot = permit.snapshot();
        let route = permit.route();
        let server_config = &snapshot.config.server;
        let Facts { key, idempotent, has_host } = facts;
        let host_is_server = !route.preserve_host || !has_host;
        let id_field = (self.request_id.as_ref())
            .map(|id| (server_config.request_id_header.as_bytes(), id.as_bytes()));
        let (buf, out) = (&self.buf, &mut self.out);
        let added = crate::request::Added { route: Some(route), request_id: id_field };
        self.head.write_upstream(buf, out, self.client, host_is_server, added);
        let method = self.head.method.clone();
        let draining = self.worker.drain.fired();
        // `on_failure = "queue"`: what a job keeps of the head, should the upstream fail.
        let job = permit.queue_on_failure.and_then(|_| self.job_head(permit));
        let mut body = ClientBody::new(
            &mut self.stream,
            &mut self.buf,
            &self.head,
            body_limit(snapshot, route),
            server_config.body_timeout,
            server_config.send_timeout,
            &self.worker,
        );
        let forwarded = proxy::forward(
            Forward {
                worker: &self.worker,
                snapshot,
                upstream,
                key,
                method: &method,
                idempotent,
                upgrade: self.head.upgrade,
                framing: self.head.framing,
                head: &mut self.out,
                host_is_server,
                start: self.clock,
                deadline: permit.deadline,
                priority: permit.priority,
                route: Some(permit.route_index()),
                client_deadline: None,
                head_len: 0,
                degrade: route.degrade.as_ref(),
                cache,
            },
            &mut body,
            &mut self.timer,
        )
        .await;
        if let (Some(topic), Some(job)) = (crate::queue::takes_over(&forwarded, permit), job) {
            // The body is still whole (nothing reached an upstream): it goes to the queue.
            if body.rewind() {
                let limit = Self::job_body_limit(permit);
                let read = body.read_to_end(&mut self.timer, limit).await;
                let (pos, body_complete) = body.finish();
                let consumed = pos.min(self.buf.len());
                bytes::Buf::advance(&mut self.buf, consumed);
                return self.store_job(permit, topic, job, read, body_complete).await;
            }
        }
        let (pos, body_complete) = body.finish();
        let consumed = pos.min(self.buf.len());
        bytes::Buf::advance(&mut self.buf, consumed);
        let response = match forwarded {
            Forwarded::Response(response) => response,
            Forwarded::Refused(refusal, at) => {
                return self.refuse_after_forward(&refusal, at, body_complete).await;
            }
            Forwarded::Client(error, at) => {
                return self.client_failed(error, at, body_complete).await
            }
            Forwarded::Cached(served) => {
                let fields = permit.fields_for_stored();
                return self.serve_stored(&served, fields, Some(body_complete)).await;
            }
        };
        let at = response.server();
        self.upstream_timing = Some(response.timing);
        if response.head.status == 101 {
            return self.switch(response, at).await;
        }
        // An early answer leaves the client's body unread: the connection cannot carry more.
        let close = self.head.close || draining || self.worker.drain.fired() || !body_complete;
        let client = Http1Client { http10: self.head.version == http::Version::HTTP_10, close };
        let relayed = self.relay(response, client, idempotent, &permit.fields).await;
        let (status, after) = match relayed {
            Relayed::Done { keep_open, status } if keep_open && body_complete => {
                (status, After::KeepOpen)
            }
            Relayed::Done { status, .. } if !body_complete => (status, After::Linger),
            Relayed::Done { status, .. } => (status, After::Close),
            Relayed::Refused(refusal) => {
                return self.refuse_after_forward(&refusal, at, body_complete).await;
            }
            Relayed::Cut { status } => {
                return (Served { status, upstream: at, reason: None }, After::Close);
            }
            // The head never reached the client: it left before its answer (499).
            Relayed::ClientGone { status: None } => {
                return (Served::refused(Reason::ClientClosed, at), After::Close);
            }
            Relayed::ClientGone { status: Some(status) } => {
                self.worker.shared.registry.client_aborts.add(1);
                return (Served { status, upstream: at, reason: None }, After::Close);
            }
        };
        (Served { status, upstream: at, reason: None }, after)
    }

    /// Seawall answers instead of the upstream, after the request went (part of) the way.
    pub(super) async fn refuse_after_forward(
        &mut self,
        refusal: &Refusal,
        at: Option<(usize, usize)>,
        body_complete: bool,
    ) -> (Served, After) {
        let close = self.head.close
            || !body_complete
            || self.worker.drain.fired()
            || refusal.reason.closes_connection();
        let how = self.answer_kind(close);
        self.write_refusal(refusal, how);
        if self.write_client_once().await.is_err() {
            return (Served::refused(Reason::ClientClosed, at), After::Close);
        }
        let after = match (close, body_complete) {
            (false, _) => After::KeepOpen,
            (true, true) => After::Close,
            (true, false) => After::Linger,
        };
        (Served::answered(refusal, at), after)
    }

    /// The client's side failed: a body that stalled or grew too large gets its answer; a broken
    /// body or a departed client gets nothing.
    pub(super) async fn client_failed(
        &mut self,
        error: BodyError,
        at: Option<(usize, usize)>,
        body_complete: bool,
    ) -> (Served, After) {
        match error {
            BodyError::Gone => (Served::refused(Reason::ClientClosed, at), After::Close),
            BodyError::Timeout => {
                self.worker.shared.registry.client_body_timeouts.add(1);
                let refusal = Refusal::new(error.reason(), error.detail());
                let how = self.answer_kind(true);
                self.write_refusal(&refusal, how);
                let _ = self.write_client_once().await;
                (Served::refused(error.reason(), at), After::Close)
            }
            BodyError::TooLarge(_) | BodyError::Invalid => {
                let refusal = Refusal::new(error.reason(), error.detail());
                self.refuse_after_forward(&refusal, at, body_complete).await
            }
        }
    }

    /// Relays the upstream's answer to the client.
    async fn relay(
        &mut self,
        mut response: Box<UpstreamResponse>,
        client: Http1Client,
        idempotent: bool,
        added: &[u8],
    ) -> Relayed {
        let rendered = response::write_http1(&response.view(), client, added, &mut self.out);
        let Ok((mode, keep_open)) = rendered else {
            let detail = "the upstream's transfer coding cannot be sent to this client";
            return Relayed::Refused(Refusal::new(Reason::UpstreamError, detail));
        };
        let status = response.head.status;
        // The first bytes go out with the head, in one write where they fit.
        let mut decoded = Vec::new();
        let first = match mode {
            Relay::Decode => response
                .decoded_ready(&mut |d| decoded.extend_from_slice(d))
                .map(|done| (&decoded[..], done)),
            _ => response.raw_ready(),
        };
        let (first, done) = match first {
            Ok(first) => first,
            Err(fault) => {
                let detail = format!("upstream {fault}");
                return Relayed::Refused(Refusal::new(Reason::UpstreamError, detail));
            }
        };
        let mut line = [0u8; 18];
        let (start, end): (&[u8], &[u8]) = if mode == Relay::Rechunk && !first.is_empty() {
            (chunk_line(first.len(), &mut line), CHUNK_END)
        } else {
            (b"", b"")
        };
        let last: &[u8] = if done && mode == Relay::Rechunk { LAST_CHUNK } else { b"" };
        let send_timeout = self.worker.snapshot().config.server.send_timeout;
        let mut slices = [
            IoSlice::new(&self.out),
            IoSlice::new(start),
            IoSlice::new(first),
            IoSlice::new(end),
            IoSlice::new(last),
        ];
        let size = slices.iter().map(|s| s.len() as u64).sum::<u64>();
        if write_within(&mut self.stream, &mut slices, &mut self.timer, send_timeout, &self.worker)
            .await
            .is_err()
        {
            return Relayed::ClientGone { status: None };
        }
        self.sent += size;
        if done {
            {
                let now = self.tick_ms();
                response.finish(now);
            }
            return Relayed::Done { keep_open, status };
        }
        self.head_sent = Some(Instant::now());
        loop {
            let watched = self.watch_fill(&mut response, idempotent).await;
            match watched {
                Filled::Ok => {}
                Filled::Fault => return Relayed::Cut { status },
                Filled::ClientGone => return Relayed::ClientGone { status: Some(status) },
            }
            decoded.clear();
            let piece = match mode {
                Relay::Decode => response
                    .decoded_ready(&mut |d| decoded.extend_from_slice(d))
                    .map(|done| (&decoded[..], done)),
                _ => response.raw_ready(),
            };
            let Ok((piece, done)) = piece else { return Relayed::Cut { status } };
            let (start, end): (&[u8], &[u8]) = if mode == Relay::Rechunk && !piece.is_empty() {
                (chunk_line(piece.len(), &mut line), CHUNK_END)
            } else {
                (b"", b"")
            };
            let last: &[u8] = if done && mode == Relay::Rechunk { LAST_CHUNK } else { b"" };
            let mut slices =
                [IoSlice::new(start), IoSlice::new(piece), IoSlice::new(end), IoSlice::new(last)];
            let size = slices.iter().map(|s| s.len() as u64).sum::<u64>();
            if write_within(
                &mut self.stream,
                &mut slices,
                &mut self.timer,
                send_timeout,
                &self.worker,
            )
            .await
            .is_err()
            {
                return Relayed::ClientGone { status: Some(status) };
            }
            self.sent += size;
            if done {
                {
                    let now = self.tick_ms();
                    response.finish(now);
                }
                return Relayed::Done { keep_open, status };
            }
        }
    }

    /// Waits for more of the upstream's body while watching the client: a client that leaves an
    /// idempotent request (or breaks the connection) ends the relay.
    async fn watch_fill(&mut self, response: &mut UpstreamResponse, idempotent: bool) -> Filled {
        let (stream, buf, timer) = (&mut self.stream, &self.buf, &mut self.timer);
        let mut watching = true;
        let mut client_sent = !buf.is_empty();
        std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = response.poll_fill(cx, timer) {
                return Poll::Ready(if result.is_ok() { Filled::Ok } else { Filled::Fault });
            }
            if watching {
                match poll_client_gone(stream, &mut client_sent, cx) {
                    Poll::Ready(Gone::Reset) => return Poll::Ready(Filled::ClientGone),
                    Poll::Ready(Gone::Closed) if idempotent => {
                        return Poll::Ready(Filled::ClientGone)
                    }
                    Poll::Ready(Gone::Closed) => watching = false,
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Completes a protocol switch: the client gets the upstream's 101, and the connection
    /// becomes a tunnel (run by the session once the request is accounted for).
    async fn switch(
        &mut self,
        response: Box<UpstreamResponse>,
        at: Option<(usize, usize)>,
    ) -> (Served, After) {
        let served = Served { status: 101, upstream: at, reason: None };
        response::write_http1_informational(&response.view(), &mut self.out);
        let (upstream, rest) = response.into_tunnel();
        let mut slices = [IoSlice::new(&self.out), IoSlice::new(&rest)];
        let send_timeout = self.worker.snapshot().config.server.send_timeout;
        let written = write_within(
            &mut self.stream,
            &mut slices,
            &mut self.timer,
            send_timeout,
            &self.worker,
        );
        if written.await.is_err() {
            return (Served::refused(Reason::ClientClosed, at), After::Close);
        }
        (served, After::Tunnel(Box::new(upstream)))
    }

    /// Copies bytes both ways until either side closes, the tunnel idles past
    /// `tunnel_idle_timeout`, or the gateway drains.
    pub(super) async fn tunnel(&mut self, mut upstream: Box<RawConn>) {
        let idle = self.worker.snapshot().config.server.tunnel_idle_timeout;
        let registry = &self.worker.shared.registry;
        registry.tunnels_open.add(1);
        let ended = super::tunnel::pump(
            &mut self.stream,
            &mut upstream.stream,
            std::mem::take(&mut self.buf),
            &mut self.timer,
            idle,
            &self.worker.drain,
        )
        .await;
        registry.tunnels_open.add(-1);
        if ended == super::tunnel::Ended::Idle {
            registry.tunnel_idle_timeouts.add(1);
        }
    }
}

/// How relaying went.
enum Relayed {
    Done {
        keep_open: bool,
        status: u16,
    },
    /// Seawall answers instead (nothing was sent yet); the server, if known.
    Refused(Refusal),
    /// The upstream broke off a body already under way: the client's connection is cut.
    Cut {
        status: u16,
    },
    /// The client left or stopped reading: before the head reached it (`None`) or after.
    ClientGone {
        status: Option<u16>,
    },
}

enum Filled {
    Ok,
    Fault,
    ClientGone,
}

/// Whether the client has left, looking at its socket without taking its bytes. A client that
/// sent more (a pipelined request) is plainly still there: once seen, it is not looked at again.
fn poll_client_gone<S: Transport>(
    stream: &mut S,
    client_sent: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Gone> {
    if *client_sent {
        return Poll::Pending;
    }
    match stream.poll_peek(cx) {
        Poll::Ready(Ok(0)) => Poll::Ready(Gone::Closed),
        Poll::Ready(Ok(_)) => {
            *client_sent = true;
            Poll::Pending
        }
        Poll::Ready(Err(_)) => Poll::Ready(Gone::Reset),
        Poll::Pending => Poll::Pending,
    }
}

/// Where the request body stands.
enum BodyState {
    /// `remaining` bytes of a `Content-Length` body of `total` still to hand out.
    Length { total: u64, remaining: u64 },
    /// A chunked body, decoded in place: its data is moved together in the buffer, so however
    /// small the client's chunks, what is ready goes upstream in one write.
    Chunked {
        scanner: ChunkedScanner,
        /// `buf[pos..decoded]` is decoded data ready to send; `buf[decoded..scanned]` is framing
        /// (and data already moved); from `scanned` on, nothing is read yet.
        decoded: usize,
        scanned: usize,
        /// Scratch: the data runs found by the last scan.
        runs: Vec<(usize, usize)>,
    },
}

/// The request body as it arrives on this connection (the HTTP/1.1 engine's [`Downstream`]).
pub(super) struct ClientBody<'s, S> {
    stream: &'s mut S,
    buf: &'s mut BytesMut,
    /// `buf[..pos]` is consumed (the head, and body bytes already sent on).
    pos: usize,
    state: BodyState,
    /// Where the body started, for a rewind.
    start: usize,
    limit: u64,
    body_timeout: Duration,
    send_timeout: Duration,
    /// `100 Continue` is owed before the client sends its body.
    owe_continue: bool,
    http11: bool,
    /// Part of the body left the buffer: it can no longer be sent again.
    streamed: bool,
    /// The client sent bytes beyond the request (pipelined): it is plainly still there.
    client_sent: bool,
    worker: &'s Worker,
}

impl<'s, S: Transport> ClientBody<'s, S> {
    pub(super) fn new(
        stream: &'s mut S,
        buf: &'s mut BytesMut,
        head: &super::head::RequestHead,
        limit: u64,
        body_timeout: Duration,
        send_timeout: Duration,
        worker: &'s Worker,
    ) -> Self {
        let state = match head.framing {
            BodyFraming::None => BodyState::Length { total: 0, remaining: 0 },
            BodyFraming::Length(n) => BodyState::Length { total: n, remaining: n },
            BodyFraming::Streamed => BodyState::Chunked {
                scanner: ChunkedScanner::default(),
                decoded: head.len,
                scanned: head.len,
                runs: Vec::new(),
            },
        };
        let has_body = head.framing != BodyFraming::None && head.framing != BodyFraming::Length(0);
        ClientBody {
            stream,
            buf,
            pos: head.len,
            state,
            start: head.len,
            limit,
            body_timeout,
            send_timeout,
            owe_continue: head.expect_continue && has_body,
            http11: head.version == http::Version::HTTP_11,
            streamed: false,
            client_sent: false,
            worker,
        }
    }

    /// Where the request ends in the buffer (as far as known), and whether the whole body was
    /// read.
    pub(super) fn finish(self) -> (usize, bool) {
        (self.request_end(), self.is_complete())
    }

    /// Where the request ends in the buffer; the whole buffer while its end is not known yet.
    fn request_end(&self) -> usize {
        match &self.state {
            BodyState::Length { remaining, .. } => {
                let rest = usize::try_from(*remaining).unwrap_or(usize::MAX);
                self.pos.saturating_add(rest).min(self.buf.len())
            }
            BodyState::Chunked { scanner, scanned, .. } if scanner.is_done() => *scanned,
            BodyState::Chunked { .. } => self.buf.len(),
        }
    }

    /// Decodes what arrived of a chunked body, moving its data next to what is already decoded.
    fn scan(&mut self) -> Result<(), BodyError> {
        let BodyState::Chunked { scanner, decoded, scanned, runs } = &mut self.state else {
            return Ok(());
        };
        if scanner.is_done() || *scanned >= self.buf.len() {
            return Ok(());
        }
        runs.clear();
        let base = self.buf.as_ptr() as usize;
        let used = scanner
            .feed_with(
                &self.buf[*scanned..],
                |d| {
                    let start = d.as_ptr() as usize - base;
                    runs.push((start, start + d.len()));
                },
                |_| {},
            )
            .map_err(|_| BodyError::Invalid)?;
        for &(start, end) in runs.iter() {
            // Data only ever moves towards the front, over framing already read.
            self.buf.copy_within(start..end, *decoded);
            *decoded += end - start;
        }
        *scanned += used;
        if scanner.data_len() > self.limit {
            return Err(BodyError::TooLarge(self.limit));
        }
        Ok(())
    }

    /// Drops what was handed out (and framing read) from the front of the buffer.
    fn compact(&mut self) {
        let consumed = match &self.state {
            BodyState::Length { .. } => self.pos,
            BodyState::Chunked { decoded, scanned, .. } if self.pos == *decoded => *scanned,
            BodyState::Chunked { .. } => self.pos,
        };
        if consumed == 0 {
            return;
        }
        self.buf.advance(consumed);
        // Only the head left: the body is all still here.
        self.streamed |= consumed > self.start;
        self.pos -= consumed.min(self.pos);
        self.start = 0;
        if let BodyState::Chunked { decoded, scanned, .. } = &mut self.state {
            *decoded -= consumed.min(*decoded);
            *scanned -= consumed;
        }
    }
}

impl<S: Transport> Downstream for ClientBody<'_, S> {
    fn ready(&mut self) -> Result<(&[u8], bool), BodyError> {
        self.scan()?;
        match &self.state {
            BodyState::Length { remaining, .. } => {
                let available = self.buf.len() - self.pos;
                let n = available.min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                Ok((&self.buf[self.pos..self.pos + n], n as u64 == *remaining))
            }
            BodyState::Chunked { scanner, decoded, .. } => {
                Ok((&self.buf[self.pos..*decoded], scanner.is_done()))
            }
        }
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if let BodyState::Length { remaining, .. } = &mut self.state {
            *remaining -= n as u64;
        }
    }

    fn is_complete(&self) -> bool {
        match &self.state {
            BodyState::Length { remaining, .. } => *remaining == 0,
            BodyState::Chunked { scanner, decoded, .. } => {
                scanner.is_done() && self.pos >= *decoded
            }
        }
    }

    fn rewind(&mut self) -> bool {
        if self.streamed {
            return false;
        }
        // Nothing of the body left the buffer: it is all still there, from its start (a chunked
        // body decoded in place there).
        self.pos = self.start;
        if let BodyState::Length { total, remaining } = &mut self.state {
            *remaining = *total;
        }
        true
    }

    async fn fill(&mut self, timer: &mut LazyTimer) -> Result<(), BodyError> {
        if self.owe_continue {
            self.owe_continue = false;
            if self.buf.len() <= self.pos {
                let mut slices = [IoSlice::new(CONTINUE)];
                write_within(self.stream, &mut slices, timer, self.send_timeout, self.worker)
                    .await
                    .map_err(|_| BodyError::Gone)?;
            }
        }
        self.compact();
        make_room(self.buf, BODY_READ);
        timer.set(Instant::now() + self.body_timeout);
        match within(timer, self.stream.read_buf(self.buf)).await {
            None => Err(BodyError::Timeout),
            Some(Ok(0) | Err(_)) => Err(BodyError::Gone),
            Some(Ok(_)) => Ok(()),
        }
    }

    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<Gone> {
        if self.buf.len() > self.request_end() {
            // Bytes past the request: the client is sending its next one.
            return Poll::Pending;
        }
        poll_client_gone(self.stream, &mut self.client_sent, cx)
    }

    async fn interim(&mut self, view: &ResponseView<'_>) -> Result<(), BodyError> {
        // 100 Continue is Seawall's own business (it answers Expect itself); HTTP/1.0 clients
        // get no interim answers at all (RFC 9110 §15.2).
        if !self.http11 || view.head.status == 100 {
            return Ok(());
        }
        let mut out = Vec::with_capacity(256);
        response::write_http1_informational(view, &mut out);
        let mut slices = [IoSlice::new(&out)];
        let mut timer = LazyTimer::new(Instant::now() + self.send_timeout);
        write_within(self.stream, &mut slices, &mut timer, self.send_timeout, self.worker)
            .await
            .map_err(|_| BodyError::Gone)
    }
}
