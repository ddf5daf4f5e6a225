//! Group-commit durable-queue benchmark: redb vs fjall (fsync before ack).
//!
//! Usage: queue-store <calib|redb|fjall> <data_dir> [runs] [warmup_s] [measure_s]
//! Prints one tab-separated line per run prefixed with `RESULT`.

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PRODUCERS: usize = 64;
const MAX_BATCH: usize = 1024;
const DELETE_BATCH: usize = 64;

type Key = [u8; 16];

struct Job {
    key: Key,
    value: Vec<u8>,
    ack: Sender<()>,
}

trait Store: Send {
    /// Write all jobs in one transaction and make it durable (fsync) before returning.
    fn commit_durable(&mut self, jobs: &[Job]);
    /// Delete keys in one non-durable commit.
    fn delete_nondurable(&mut self, keys: &[Key]);
    /// Make everything durable (used after the delete phase).
    fn sync(&mut self);
    /// Try to reclaim space explicitly (redb compact / fjall flush + major compaction).
    fn reclaim(&mut self);
}

// ---------------- redb ----------------
const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("jobs");

struct Redb {
    db: redb::Database,
}

impl Redb {
    fn open(dir: &Path) -> Self {
        let db = redb::Database::create(dir.join("queue.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TABLE).unwrap();
        txn.commit().unwrap();
        Redb { db }
    }
}

impl Store for Redb {
    fn commit_durable(&mut self, jobs: &[Job]) {
        let mut txn = self.db.begin_write().unwrap();
        txn.set_durability(redb::Durability::Immediate); // the default, made explicit
        {
            let mut t = txn.open_table(TABLE).unwrap();
            for j in jobs {
                t.insert(&j.key[..], &j.value[..]).unwrap();
            }
        }
        txn.commit().unwrap(); // returns after fsync
    }
    fn delete_nondurable(&mut self, keys: &[Key]) {
        let mut txn = self.db.begin_write().unwrap();
        txn.set_durability(redb::Durability::None);
        {
            let mut t = txn.open_table(TABLE).unwrap();
            for k in keys {
                t.remove(&k[..]).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    fn sync(&mut self) {
        // An empty Immediate commit persists preceding Durability::None commits and frees their pages.
        let mut txn = self.db.begin_write().unwrap();
        txn.set_durability(redb::Durability::Immediate);
        txn.commit().unwrap();
    }
    fn reclaim(&mut self) {
        // compact() may need several passes
        for _ in 0..8 {
            if !self.db.compact().unwrap() {
                break;
            }
        }
    }
}

// ---------------- fjall ----------------
struct Fjall {
    ks: fjall::Keyspace,
    part: fjall::PartitionHandle,
}

impl Fjall {
    fn open(dir: &Path) -> Self {
        let ks = fjall::Config::new(dir.join("fjall")).open().unwrap();
        let part = ks
            .open_partition("jobs", fjall::PartitionCreateOptions::default())
            .unwrap();
        Fjall { ks, part }
    }
}

impl Store for Fjall {
    fn commit_durable(&mut self, jobs: &[Job]) {
        // durability(Some(SyncAll)): journal is fsync'd inside commit(), before it returns.
        let mut b = self.ks.batch().durability(Some(fjall::PersistMode::SyncAll));
        for j in jobs {
            b.insert(&self.part, &j.key[..], &j.value[..]);
        }
        b.commit().unwrap();
    }
    fn delete_nondurable(&mut self, keys: &[Key]) {
        let mut b = self.ks.batch(); // no durability => written to OS buffers only
        for k in keys {
            b.remove(&self.part, &k[..]);
        }
        b.commit().unwrap();
    }
    fn sync(&mut self) {
        self.ks.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    fn reclaim(&mut self) {
        self.part.rotate_memtable_and_wait().unwrap();
        self.part.major_compact().unwrap();
        self.ks.persist(fjall::PersistMode::SyncAll).unwrap();
    }
}

// ---------------- helpers ----------------
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
}

fn make_job(rng: &mut Rng, seq: u64) -> (Key, Vec<u8>) {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&rng.next().to_le_bytes());
    key[8..].copy_from_slice(&rng.next().to_le_bytes());
    let mut v = Vec::with_capacity(320);
    write!(
        v,
        "POST /v1/orders/{seq} HTTP/1.1\r\nhost: api.example\r\ncontent-type: application/json\r\nx-request-id: {:016x}\r\n\r\n",
        rng.next()
    )
    .unwrap();
    let body_start = v.len();
    v.resize(body_start + 200, b'x');
    for b in &mut v[body_start..] {
        *b = b'a' + (rng.next() % 26) as u8;
    }
    (key, v)
}

fn dir_bytes(p: &Path) -> (u64, u64) {
    // (apparent length, allocated bytes)
    let mut len = 0;
    let mut alloc = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                let (a, b) = dir_bytes(&e.path());
                len += a;
                alloc += b;
            } else {
                len += m.len();
                alloc += m.blocks() * 512;
            }
        }
    }
    (len, alloc)
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn calib(dir: &Path, secs: u64) {
    use std::os::unix::io::AsRawFd;
    let path = dir.join("calib.bin");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let buf = vec![7u8; 4096];
    let mut lats = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        let t = Instant::now();
        f.write_all(&buf).unwrap();
        unsafe { libc::fdatasync(f.as_raw_fd()) };
        lats.push(t.elapsed().as_micros() as u64);
    }
    let el = start.elapsed().as_secs_f64();
    lats.sort_unstable();
    let mean = lats.iter().sum::<u64>() as f64 / lats.len() as f64;
    println!(
        "RESULT\tcalib\tops_s={:.0}\tmean_us={:.0}\tp50_us={}\tp99_us={}",
        lats.len() as f64 / el,
        mean,
        pct(&lats, 0.5),
        pct(&lats, 0.99)
    );
    drop(f);
    std::fs::remove_file(path).unwrap();
}

struct WriterOut {
    keys: Vec<Key>,
    acks: u64,
    batches: u64,
    lats: Vec<u64>,
}

fn run_once(kind: &str, dir: &Path, run: usize, warm: u64, meas: u64) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let mut store: Box<dyn Store> = match kind {
        "redb" => Box::new(Redb::open(dir)),
        "fjall" => Box::new(Fjall::open(dir)),
        _ => panic!("unknown store"),
    };

    let (tx, rx): (Sender<Job>, Receiver<Job>) = unbounded();
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let total_acks = Arc::new(AtomicU64::new(0));

    let writer = {
        let measuring = measuring.clone();
        std::thread::spawn(move || {
            let mut out = WriterOut { keys: Vec::new(), acks: 0, batches: 0, lats: Vec::new() };
            let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
            // recv blocks until a job arrives; channel closes when all producers exit.
            while let Ok(first) = rx.recv() {
                batch.push(first);
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(j) => batch.push(j),
                        Err(_) => break,
                    }
                }
                let t = Instant::now();
                store.commit_durable(&batch);
                let us = t.elapsed().as_micros() as u64;
                if measuring.load(Ordering::Relaxed) {
                    out.acks += batch.len() as u64;
                    out.batches += 1;
                    out.lats.push(us);
                }
                for j in batch.drain(..) {
                    out.keys.push(j.key);
                    let _ = j.ack.send(()); // ack only after durable commit
                }
            }
            (store, out)
        })
    };

    let producers: Vec<_> = (0..PRODUCERS)
        .map(|i| {
            let tx = tx.clone();
            let stop = stop.clone();
            let total = total_acks.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(0x1234_5678 ^ ((i as u64) << 32) ^ (run as u64));
                let (ack_tx, ack_rx) = bounded::<()>(1);
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (key, value) = make_job(&mut rng, seq);
                    seq += 1;
                    tx.send(Job { key, value, ack: ack_tx.clone() }).unwrap();
                    ack_rx.recv().unwrap();
                    total.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    drop(tx);

    std::thread::sleep(Duration::from_secs(warm));
    measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(meas));
    measuring.store(false, Ordering::Relaxed);
    let el = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.join().unwrap();
    }
    let (mut store, mut out) = writer.join().unwrap();
    let n = out.keys.len() as u64;
    let (len_after, alloc_after) = dir_bytes(dir);

    // delete phase: same keys, batches of 64, non-durable commits
    let td = Instant::now();
    for chunk in out.keys.chunks(DELETE_BATCH) {
        store.delete_nondurable(chunk);
    }
    let del_el = td.elapsed().as_secs_f64();
    store.sync();
    let (len_del, alloc_del) = dir_bytes(dir);
    let tr = Instant::now();
    store.reclaim();
    let reclaim_el = tr.elapsed().as_secs_f64();
    let (len_rec, alloc_rec) = dir_bytes(dir);
    drop(store);

    out.lats.sort_unstable();
    let mean_lat = out.lats.iter().sum::<u64>() as f64 / out.lats.len().max(1) as f64;
    println!(
        "RESULT\t{kind}\trun={run}\tacks_s={:.0}\tmean_batch={:.1}\tcommit_mean_us={:.0}\tcommit_p50_us={}\tcommit_p99_us={}\tjobs={n}\tbytes_len={len_after}\tbytes_alloc={alloc_after}\tbytes_per_job={:.0}\tdel_ops_s={:.0}\tafter_del_alloc={alloc_del}\tafter_del_len={len_del}\tafter_reclaim_alloc={alloc_rec}\tafter_reclaim_len={len_rec}\treclaim_s={:.2}",
        out.acks as f64 / el,
        out.acks as f64 / out.batches.max(1) as f64,
        mean_lat,
        pct(&out.lats, 0.5),
        pct(&out.lats, 0.99),
        alloc_after as f64 / n as f64,
        n as f64 / del_el,
        reclaim_el,
    );
    std::fs::remove_dir_all(dir).unwrap();
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let kind = a.get(1).map(String::as_str).unwrap_or("calib");
    let dir = PathBuf::from(a.get(2).map(String::as_str).unwrap_or("/tmp/qs-data"));
    let runs: usize = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(3);
    let warm: u64 = a.get(4).and_then(|s| s.parse().ok()).unwrap_or(2);
    let meas: u64 = a.get(5).and_then(|s| s.parse().ok()).unwrap_or(10);
    std::fs::create_dir_all(&dir).unwrap();
    if kind == "calib" {
        calib(&dir, meas.min(5));
        return;
    }
    for r in 0..runs {
        run_once(kind, &dir.join(kind), r, warm, meas);
    }
}
