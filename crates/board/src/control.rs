//! Control requests the machine loop serves between slices (so the machine is always quiesced when one runs).
//! The front end carries them over the control API socket.

use crate::machine::Machine;
use crate::persist::Pages;

pub use kemari_machine::control::*;

impl Machine {
    /// Serves a request; `reply` is used for requests that answer later (migration).
    pub(crate) fn control(&mut self, req: Request, reply: std::sync::mpsc::Sender<Reply>) -> Option<Reply> {
        if let Request::Migrate { to, downtime_ms } = req {
            if self.migration.is_some() {
                return Some(Reply::Error("a migration is already running".into()));
            }
            if self.protection.is_some() {
                return Some(Reply::Error(
                    "this VM is protected by a secondary: live migration of a protected pair is not supported".into(),
                ));
            }
            let budget = std::time::Duration::from_millis(downtime_ms.max(1));
            return match crate::migrate::Migration::start(self, &to, budget, reply) {
                Ok(m) => {
                    self.migration = Some(m);
                    None
                }
                Err(e) => Some(Reply::Error(format!("cannot migrate to {to}: {e}"))),
            };
        }
        Some(match req {
            Request::Pause => {
                self.paused = true;
                self.dev.clock.pause();
                Reply::Ok
            }
            Request::Resume => {
                // A stalled disk write is tried again by the next release.
                self.dev.gate.lock().expect("gate lock").clear_stall();
                self.paused = false;
                Reply::Ok
            }
            Request::Status => Reply::Status {
                paused: self.paused,
                harts: self.harts.len(),
                memory_mib: self.ram.size() >> 20,
                instret: self.harts.iter().map(|h| h.state().instret).sum(),
                migration: self.migration.as_ref().map(|m| m.progress()),
                protection: self.protection.as_ref().map(|status| Box::new(status())),
                io_error: self.dev.gate.lock().expect("gate lock").stalled().map(str::to_string),
            },
            Request::Snapshot { dir } => {
                let start = std::time::Instant::now();
                // Guest time stops while the state is taken, so the restored guest sees no jump.
                self.dev.clock.pause();
                let bytes = match self.save(Pages::AllNonZero) {
                    Ok(bytes) => bytes,
                    Err(e) => return Some(Reply::Error(format!("cannot take a snapshot: {e}"))),
                };
                let written =
                    std::fs::create_dir_all(&dir).and_then(|()| write_atomically(&dir.join(SNAPSHOT_STATE), &bytes));
                match written {
                    Ok(()) => Reply::Snapshot { bytes: bytes.len() as u64, millis: start.elapsed().as_millis() as u64 },
                    Err(e) => Reply::Error(format!("cannot write snapshot to {}: {e}", dir.display())),
                }
            }
            Request::Migrate { .. } => unreachable!("handled above"),
        })
    }
}

/// Writes via a temporary file and rename, so a crash never leaves a half-written snapshot under the real name.
/// On an error the temporary file is removed: a full disk must not stay full of a snapshot that failed.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let written = std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("kemari-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // The target is a non-empty directory, so the final rename fails after the temporary file is written.
        let target = dir.join("state");
        std::fs::create_dir_all(target.join("occupied")).unwrap();
        assert!(write_atomically(&target, b"snapshot").is_err());
        assert!(!dir.join("state.tmp").exists(), "the temporary file was left behind");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
