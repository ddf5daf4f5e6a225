//! Watching files: the configuration file, and the TLS listener's certificates and keys. A cheap
//! poll of each file's modification time and size once a second (robust to editors and tools
//! that replace a file rather than write it in place). A change counts once the files have
//! stayed the same for a moment and none is empty, so a reload never reads a file caught
//! half-written (truncated, then filled).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How long a changed file must stay unchanged before it is read.
const SETTLE: Duration = Duration::from_millis(200);

/// What is compared: modification time and size.
type Stamp = Option<(SystemTime, u64)>;

/// Reports when the configuration file changes.
pub struct FileWatcher {
    files: FilesWatcher,
}

impl FileWatcher {
    /// Watches `path` (never fires when `None`).
    pub fn new(path: Option<PathBuf>) -> Self {
        let mut files = FilesWatcher::default();
        let _ = files.watch(path.into_iter().collect());
        FileWatcher { files }
    }

    /// Resolves the next time the file's modification time or size differs from last seen.
    pub async fn changed(&mut self) {
        self.files.changed().await;
    }
}

/// Reports when any of a set of files changes.
#[derive(Debug, Default)]
pub struct FilesWatcher {
    paths: Vec<PathBuf>,
    last: Vec<Stamp>,
}

impl FilesWatcher {
    /// Watches `paths` from now on; a set equal to the current one keeps what was last seen.
    /// True when it replaces a set watched before (what the new files hold may not have been
    /// read yet).
    pub fn watch(&mut self, paths: Vec<PathBuf>) -> bool {
        if paths == self.paths {
            return false;
        }
        let moved = !self.paths.is_empty();
        self.last = stamps(&paths);
        self.paths = paths;
        moved
    }

    /// Resolves the next time a file's modification time or size differs from last seen and
    /// every file is there and not empty (never, with no file).
    pub async fn changed(&mut self) {
        if self.paths.is_empty() {
            return std::future::pending().await;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let mut seen = stamps(&self.paths);
            if seen == self.last {
                continue;
            }
            // Changed: wait until it stops changing.
            loop {
                tokio::time::sleep(SETTLE).await;
                let again = stamps(&self.paths);
                if again == seen {
                    break;
                }
                seen = again;
            }
            if seen.iter().all(|s| s.is_some_and(|(_, len)| len > 0)) {
                self.last = seen;
                return;
            }
        }
    }
}

fn stamps(paths: &[PathBuf]) -> Vec<Stamp> {
    paths.iter().map(|p| stamp(p)).collect()
}

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
