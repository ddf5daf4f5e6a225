//! Watching the configuration file: a cheap poll of its modification time and size once a second
//! (robust to editors that replace the file rather than write it in place). A change counts once
//! the file has stayed the same for a moment and is not empty, so a reload never reads a file
//! caught half-written (truncated, then filled).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// How long a changed file must stay unchanged before it is read.
const SETTLE: Duration = Duration::from_millis(200);

/// Reports when the configuration file changes.
pub struct FileWatcher {
    path: Option<PathBuf>,
    last: Option<(SystemTime, u64)>,
}

impl FileWatcher {
    /// Watches `path` (never fires when `None`).
    pub fn new(path: Option<PathBuf>) -> Self {
        let last = path.as_deref().and_then(stamp);
        FileWatcher { path, last }
    }

    /// Resolves the next time the file's modification time or size differs from last seen.
    pub async fn changed(&mut self) {
        let Some(path) = self.path.clone() else {
            return std::future::pending().await;
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let mut seen = stamp(&path);
            if seen.is_none() || seen == self.last {
                continue;
            }
            // Changed: wait until it stops changing.
            loop {
                tokio::time::sleep(SETTLE).await;
                let again = stamp(&path);
                if again == seen {
                    break;
                }
                seen = again;
            }
            if seen.is_some_and(|(_, len)| len > 0) {
                self.last = seen;
                return;
            }
        }
    }
}

fn stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
