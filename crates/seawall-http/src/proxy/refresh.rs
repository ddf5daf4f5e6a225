//! The cache's refresh in the background: a request that finds its entry stale within
//! `stale_while_revalidate` is answered with it at once, and the entry is fetched again by a task
//! of the worker — the same upstream call as any request (`proxy::forward`: breaker, gate at P2,
//! retries, revalidation with the entry's validators), with no client: the body is read to its
//! end, which stores it. Requests arriving meanwhile are answered stale too (they find the fetch).

use std::rc::Rc;
use std::time::Duration;

use http::Method;
use seawall_core::priority::Priority;
use tokio::time::Instant;

use super::{Forward, Forwarded, StoredBody};
use crate::cache::Ticket;
use crate::headers::{classify, ConnectionOptions, HeaderLookup};
use crate::request::{write_upstream_head, BodyFraming, FieldRef, UpstreamHead};
use crate::request_id::RequestId;
use crate::timer::LazyTimer;
use crate::worker::{Pinned, Worker};

/// A refresh to run once the stale answer is on its way.
pub struct Refresh {
    pub ticket: Ticket,
    /// The route's index, and the upstream group to ask.
    pub route: usize,
    pub upstream: usize,
    /// The client that found the entry stale, and the host it asked for.
    pub client: crate::client::Client,
    pub host: Option<Vec<u8>>,
}

impl Refresh {
    /// Starts the refresh on this worker.
    pub fn spawn(self, worker: &Rc<Worker>, snapshot: &Rc<Pinned>) {
        let (worker, snapshot) = (Rc::clone(worker), Rc::clone(snapshot));
        tokio::task::spawn_local(async move { self.run(&worker, &snapshot).await });
    }

    async fn run(mut self, worker: &Worker, snapshot: &Rc<Pinned>) {
        let route = &snapshot.config.routes[self.route];
        let mut head = Vec::with_capacity(512);
        let target = self.ticket.target().to_string();
        let request = self.ticket.request();
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        request.for_each_field(&mut |name, value| {
            // The client's own validators are not this fetch's: the entry's go instead.
            if !name.eq_ignore_ascii_case(b"if-none-match")
                && !name.eq_ignore_ascii_case(b"if-modified-since")
            {
                fields.push((name.to_vec(), value.to_vec()));
            }
        });
        // What the client's `Connection` named was for its own hop, as on the request path.
        let mut connection = ConnectionOptions::default();
        for (name, value) in &fields {
            if name.eq_ignore_ascii_case(b"connection") {
                connection.add(value);
            }
        }
        let refs = fields.iter().map(|(name, value)| FieldRef {
            name,
            value,
            class: classify(name),
            named: connection.names(name),
        });
        let host_is_server = !route.preserve_host || self.host.is_none();
        let path = target.split('?').next().unwrap_or("/");
        let upstream_target = crate::edge::target(route, path.as_bytes(), target.as_bytes());
        // A refresh is its own request: it carries an id of its own.
        let server = &snapshot.config.server;
        let id = server.request_id.then(|| RequestId::generate(&worker.ids));
        write_upstream_head(
            &mut head,
            &UpstreamHead {
                method: &Method::GET,
                target: &upstream_target,
                host: if host_is_server { None } else { self.host.as_deref() },
                forwarded_host: self.host.as_deref(),
                upgrade: false,
                te_trailers: false,
                framing: BodyFraming::None,
                client: self.client,
                version: http::Version::HTTP_11,
                edits: route.request_headers.as_deref(),
                request_id: id
                    .as_ref()
                    .map(|id| (server.request_id_header.as_bytes(), id.as_bytes())),
            },
            refs,
        );
        let start = Instant::now();
        let mut timer = LazyTimer::new(start + Duration::from_secs(3600));
        let group = &snapshot.upstreams[self.upstream];
        let key = seawall_core::hash::stable_hash(target.as_bytes());
        let forwarded = super::forward(
            Forward {
                worker,
                snapshot,
                upstream: self.upstream,
                key,
                method: &Method::GET,
                idempotent: true,
                upgrade: false,
                framing: BodyFraming::None,
                head: &mut head,
                host_is_server,
                start,
                deadline: group.config.total_timeout.map(|t| start + t),
                // Nobody waits for it: the first to go when the upstream is busy.
                priority: Priority::P2,
                route: Some(self.route),
                client_deadline: None,
                head_len: 0,
                degrade: None,
                cache: Some(&mut self.ticket),
            },
            &mut StoredBody::new(&[]),
            &mut timer,
        )
        .await;
        if let Forwarded::Response(mut response) = forwarded {
            // Reading the body to its end stores it (the tap the cache put on it) — up to what
            // may be stored: past that, nobody wants the rest.
            let most = route.cache.as_ref().map_or(0, |c| c.max_object_size);
            if response.drain(&mut timer, most).await {
                (*response).finish(seawall_core::clock::now_ms());
            }
        }
    }
}
