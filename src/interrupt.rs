//! Removal of temporary files when gato is interrupted (Ctrl-C, SIGINT or
//! SIGTERM).
//!
//! Temporary files and directories are deleted when their owners drop
//! them, which a signal's default action skips. Their paths are recorded
//! here instead, and a thread that waits for the signal removes them before
//! the process exits. Finished outputs are never recorded, so an
//! interruption leaves them as they were.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Temporary paths to remove on interruption.
struct Registry {
    paths: Mutex<Vec<PathBuf>>,
}

impl Registry {
    const fn new() -> Registry {
        Registry { paths: Mutex::new(Vec::new()) }
    }

    fn track(&self, path: &Path) {
        if let Ok(mut paths) = self.paths.lock() {
            paths.push(path.to_path_buf());
        }
    }

    fn untrack(&self, path: &Path) {
        if let Ok(mut paths) = self.paths.lock()
            && let Some(i) = paths.iter().rposition(|p| p == path)
        {
            paths.swap_remove(i);
        }
    }

    /// Removes every recorded path that still exists and returns how many
    /// were removed.
    fn remove_all(&self) -> usize {
        let paths = match self.paths.lock() {
            Ok(mut paths) => std::mem::take(&mut *paths),
            Err(_) => return 0,
        };
        paths
            .iter()
            .filter(|p| {
                if p.is_dir() {
                    std::fs::remove_dir_all(p).is_ok()
                } else {
                    std::fs::remove_file(p).is_ok()
                }
            })
            .count()
    }
}

static REGISTRY: Registry = Registry::new();

/// Records `path`, a temporary file or directory, for removal on
/// interruption.
pub fn track(path: &Path) {
    REGISTRY.track(path);
}

/// Forgets `path` once it was removed or renamed into place.
pub fn untrack(path: &Path) {
    REGISTRY.untrack(path);
}

/// A recorded path, forgotten when this value is dropped.
#[derive(Debug)]
pub struct Tracked(PathBuf);

impl Tracked {
    /// Records `path` until the returned value is dropped.
    pub fn new(path: &Path) -> Tracked {
        track(path);
        Tracked(path.to_path_buf())
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        untrack(&self.0);
    }
}

/// Blocks SIGINT and SIGTERM in this thread and in every thread started
/// after it, and starts a thread that waits for either, removes the
/// recorded paths and exits with status 128 + the signal number. Call it
/// first in `main`, before any other thread starts.
#[cfg(unix)]
pub fn install() {
    // SAFETY: the set is initialised by sigemptyset before use, and the
    // calls only change this process's signal mask.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return;
        }
        set
    };
    let started = std::thread::Builder::new().name("gato-signals".into()).spawn(move || {
        let mut signal: libc::c_int = 0;
        // SAFETY: `set` is a valid signal set and `signal` a valid output.
        if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
            return;
        }
        let removed = REGISTRY.remove_all();
        eprintln!(
            "interrupted: removed {removed} temporary file(s) or directories; finished \
             outputs are unchanged"
        );
        std::process::exit(128 + signal);
    });
    if started.is_err() {
        // Without the waiting thread the signals must keep their default
        // action, or gato could not be stopped.
        // SAFETY: as above.
        unsafe {
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
    }
}

/// Does nothing where there are no Unix signals.
#[cfg(not(unix))]
pub fn install() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracked_paths_are_removed_until_untracked() {
        let registry = Registry::new();
        let dir = tempfile::tempdir().unwrap();
        let untracked = dir.path().join("untracked");
        let removed = dir.path().join("removed");
        std::fs::write(&untracked, b"x").unwrap();
        std::fs::create_dir(&removed).unwrap();
        std::fs::write(removed.join("inside"), b"x").unwrap();
        registry.track(&untracked);
        registry.untrack(&untracked);
        registry.track(&removed);
        registry.track(&dir.path().join("never made"));
        assert_eq!(registry.remove_all(), 1);
        assert!(untracked.exists(), "an untracked path stays");
        assert!(!removed.exists());
        assert_eq!(registry.remove_all(), 0, "the list is emptied");
    }
}
