//! A job: the request kept for later (method, target, the allowed fields, the body), its id, and
//! the record a store keeps of it (state, attempts, last error, next attempt), with the compact
//! binary encoding both backends store.

use std::fmt;

/// A job's id: 128 bits from the operating system's random source, written as 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub [u8; 16]);

impl JobId {
    /// A new unguessable id. The operating system's random bytes are taken 4 KiB at a time (one
    /// system call for 256 ids), per thread.
    pub fn random() -> Result<JobId, getrandom::Error> {
        thread_local! {
            static POOL: std::cell::RefCell<(Vec<u8>, usize)> = const { std::cell::RefCell::new((Vec::new(), 0)) };
        }
        POOL.with(|pool| {
            let (bytes, used) = &mut *pool.borrow_mut();
            if *used + 16 > bytes.len() {
                // Filled aside: a failed call leaves the pool empty, never zeros to hand out.
                let mut fresh = vec![0u8; 4096];
                getrandom::fill(&mut fresh)?;
                *bytes = fresh;
                *used = 0;
            }
            let mut id = [0u8; 16];
            id.copy_from_slice(&bytes[*used..*used + 16]);
            // Used bytes are not kept around.
            bytes[*used..*used + 16].fill(0);
            *used += 16;
            Ok(JobId(id))
        })
    }

    /// Parses the 32 hex digits of an id (either case).
    pub fn parse(text: &str) -> Option<JobId> {
        let text = text.as_bytes();
        if text.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, pair) in text.chunks(2).enumerate() {
            let hex = |b: u8| (b as char).to_digit(16);
            bytes[i] = (hex(pair[0])? * 16 + hex(pair[1])?) as u8;
        }
        Some(JobId(bytes))
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The request a job delivers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    pub method: String,
    /// Path and query, as the client sent them.
    pub target: String,
    /// The fields kept (lower-case names).
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The bytes the job counts against its topic's and the queue's `max_bytes`.
    pub fn size(&self) -> u64 {
        let fields: usize = self.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        (self.method.len() + self.target.len() + fields + self.body.len()) as u64
    }
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for its first attempt.
    Queued,
    /// An attempt is in progress.
    Delivering,
    /// An attempt failed; the next is at `next_attempt_ms`.
    Failed,
    /// The destination took it (2xx).
    Delivered,
    /// Out of attempts, or refused for good: a dead letter, kept until requeued or purged.
    Dead,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Delivering => "delivering",
            State::Failed => "failed",
            State::Delivered => "delivered",
            State::Dead => "dead",
        }
    }

    fn code(self) -> u8 {
        match self {
            State::Queued => 0,
            State::Delivering => 1,
            State::Failed => 2,
            State::Delivered => 3,
            State::Dead => 4,
        }
    }

    fn from_code(code: u8) -> Option<State> {
        Some(match code {
            0 => State::Queued,
            1 => State::Delivering,
            2 => State::Failed,
            3 => State::Delivered,
            4 => State::Dead,
            _ => return None,
        })
    }

    /// Whether the job still waits for delivery (counted in its topic's depth).
    pub fn is_pending(self) -> bool {
        matches!(self, State::Queued | State::Delivering | State::Failed)
    }
}

/// What a store keeps of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub state: State,
    pub attempts: u32,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// When the next attempt may start (0: at once).
    pub next_attempt_ms: u64,
    /// When the job was delivered or died (0: not yet).
    pub finished_ms: u64,
    pub last_error: String,
    /// The request; emptied once the job is delivered.
    pub request: Request,
}

/// What `GET /jobs/ID` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub id: JobId,
    pub topic: String,
    pub state: State,
    pub attempts: u32,
    pub created_ms: u64,
    pub next_attempt_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub last_error: Option<String>,
}

impl Status {
    pub fn of(id: JobId, record: &Record) -> Status {
        Status {
            id,
            topic: record.topic.clone(),
            state: record.state,
            attempts: record.attempts,
            created_ms: record.created_ms,
            next_attempt_ms: (record.state == State::Failed).then_some(record.next_attempt_ms),
            finished_ms: (record.finished_ms > 0).then_some(record.finished_ms),
            last_error: (!record.last_error.is_empty()).then(|| record.last_error.clone()),
        }
    }

    /// The JSON document `GET /jobs/ID` and the admin API answer.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "job": self.id.to_string(),
            "topic": self.topic,
            "status": self.state.as_str(),
            "attempts": self.attempts,
            "created": rfc3339_ms(self.created_ms),
            "next_attempt": self.next_attempt_ms.map(rfc3339_ms),
            "finished": self.finished_ms.map(rfc3339_ms),
            "last_error": self.last_error,
        })
    }
}

/// `ms` since the epoch as an RFC 3339 time in UTC, to the millisecond.
pub fn rfc3339_ms(ms: u64) -> String {
    seawall_core::civil::rfc3339(std::time::Duration::from_millis(ms))
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| d.as_millis() as u64)
}

/// A record that cannot be read back (a corrupted or foreign value): counted and skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a stored job record is damaged ({0})")]
pub struct Damaged(&'static str);

const VERSION: u8 = 1;

impl Record {
    /// The stored bytes: a version, fixed-width numbers, then length-prefixed strings and bytes.
    pub fn encode(&self) -> Vec<u8> {
        let r = &self.request;
        let mut out = Vec::with_capacity(64 + self.topic.len() + r.size() as usize);
        out.push(VERSION);
        out.push(self.state.code());
        out.extend_from_slice(&self.attempts.to_le_bytes());
        for n in [self.created_ms, self.next_attempt_ms, self.finished_ms] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        for s in [&self.topic, &self.last_error, &r.method, &r.target] {
            put(&mut out, s.as_bytes());
        }
        out.extend_from_slice(&(r.headers.len() as u32).to_le_bytes());
        for (name, value) in &r.headers {
            put(&mut out, name.as_bytes());
            put(&mut out, value);
        }
        put(&mut out, &r.body);
        out
    }

    /// Reads back what [`Record::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Record, Damaged> {
        let mut r = Reader(bytes);
        if r.take(1)?[0] != VERSION {
            return Err(Damaged("unknown version"));
        }
        let state = State::from_code(r.take(1)?[0]).ok_or(Damaged("unknown state"))?;
        let attempts = r.u32()?;
        let (created_ms, next_attempt_ms, finished_ms) = (r.u64()?, r.u64()?, r.u64()?);
        let topic = r.string()?;
        let last_error = r.string()?;
        let method = r.string()?;
        let target = r.string()?;
        let count = r.u32()? as usize;
        let mut headers = Vec::with_capacity(count.min(256));
        for _ in 0..count {
            let name = r.string()?;
            headers.push((name, r.bytes()?.to_vec()));
        }
        let body = r.bytes()?.to_vec();
        if !r.0.is_empty() {
            return Err(Damaged("bytes after the end"));
        }
        let request = Request { method, target, headers, body };
        Ok(Record {
            topic,
            state,
            attempts,
            created_ms,
            next_attempt_ms,
            finished_ms,
            last_error,
            request,
        })
    }
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Damaged> {
        if self.0.len() < n {
            return Err(Damaged("cut short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, Damaged> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, Damaged> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn bytes(&mut self) -> Result<&'a [u8], Damaged> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, Damaged> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| Damaged("a name is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            topic: "emails".into(),
            state: State::Failed,
            attempts: 3,
            created_ms: 1_700_000_000_123,
            next_attempt_ms: 1_700_000_005_000,
            finished_ms: 0,
            last_error: "upstream answered 503".into(),
            request: Request {
                method: "POST".into(),
                target: "/emails?to=a%40b".into(),
                headers: vec![("content-type".into(), b"application/json".to_vec())],
                body: b"{\"to\":\"a@b\"}".to_vec(),
            },
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let r = record();
        assert_eq!(Record::decode(&r.encode()), Ok(r));
    }

    #[test]
    fn damaged_bytes_are_an_error_never_a_panic() {
        let bytes = record().encode();
        for cut in 0..bytes.len() {
            assert!(Record::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[0] = 9;
        assert!(Record::decode(&flipped).is_err());
        // A length that claims more than there is.
        let mut long = bytes;
        long[38] = 0xff;
        assert!(Record::decode(&long).is_err());
    }

    #[test]
    fn ids_are_32_hex_digits_that_parse_back_and_differ() {
        let (a, b) = (JobId::random().unwrap(), JobId::random().unwrap());
        assert_ne!(a, b);
        let text = a.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(JobId::parse(&text), Some(a));
        assert_eq!(JobId::parse(&text.to_uppercase()), Some(a));
        assert_eq!(JobId::parse("not-an-id"), None);
        assert_eq!(JobId::parse(&"g".repeat(32)), None);
    }
}
