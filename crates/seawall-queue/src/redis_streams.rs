//! The Redis Streams backend, for a fleet: being written (see the queue issue); every call
//! answers an error until then, so a config that asks for it fails at start.

use std::time::Duration;

use crate::job::{JobId, Record, Status};
use crate::{Bounds, Depth, EnqueueError, Leased, StoreError};

/// Jobs in Redis Streams.
pub struct RedisStreams;

fn missing() -> StoreError {
    StoreError::Io("the Redis backend of the queue is not available in this build".into())
}

impl RedisStreams {
    pub async fn open(
        _url: &str,
        _prefix: &str,
        _lease: Duration,
        _keep: Duration,
    ) -> Result<RedisStreams, StoreError> {
        Err(missing())
    }
    pub async fn enqueue(
        &self,
        _id: JobId,
        _record: &Record,
        _bounds: &Bounds,
    ) -> Result<(), EnqueueError> {
        Err(EnqueueError::Store(missing()))
    }
    pub async fn lease(
        &self,
        _topic: &str,
        _now_ms: u64,
        _max: usize,
    ) -> Result<Vec<Leased>, StoreError> {
        Err(missing())
    }
    pub async fn settle(&self, _leased: Leased) -> Result<(), StoreError> {
        Err(missing())
    }
    pub async fn status(&self, _id: JobId) -> Result<Option<Status>, StoreError> {
        Err(missing())
    }
    pub async fn depth(&self, _topic: &str) -> Result<Depth, StoreError> {
        Err(missing())
    }
    pub async fn dead(&self, _topic: &str, _limit: usize) -> Result<Vec<Status>, StoreError> {
        Err(missing())
    }
    pub async fn revive(
        &self,
        _topic: &str,
        _only: Option<JobId>,
        _requeue: bool,
    ) -> Result<u64, StoreError> {
        Err(missing())
    }
}
