//! Watching the configuration file: a cheap poll of its modification time and size once a second
//! (robust to editors that replace the file rather than write it in place).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

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
            let now = stamp(&path);
            if now.is_some() && now != self.last {
                self.last = now;
                return;
            }
        }
    }
}

fn stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
