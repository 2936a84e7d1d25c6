//! Backup reading and encoding run behind foreground work: on a thread of their own
//! that the kernel schedules last, for the CPU (nice 19) and for the disk (the idle
//! I/O class).
//!
//! A backup beside writers on the same cores took 13-38 % of their throughput while
//! it ran (`docs/PERFORMANCE.md`, "Backups and restore"): the rate limit caps how
//! much it reads, not whose turn it is. At nice 19 it gets a core only when the
//! nodes leave one idle, yet still runs at full speed on an idle machine. The thread
//! is its own, not one of tokio's blocking pool: a thread's niceness can be raised
//! but, without privileges, never lowered again, and pool threads are reused.

use tokio::sync::oneshot;

use crate::error::BackupError;

/// The niceness of a backup thread: the lowest CPU priority there is.
const NICENESS: libc::c_int = 19;

/// Start `work` on a new thread named `name` at the lowest CPU and I/O priority, at
/// once (not when the future is first polled: the caller may stream what it
/// produces meanwhile), and return its result as a future. `Invalid` if the thread
/// could not start or panicked.
pub(crate) fn behind_foreground<T: Send + 'static>(
    name: String,
    work: impl FnOnce() -> Result<T, BackupError> + Send + 'static,
) -> impl std::future::Future<Output = Result<T, BackupError>> {
    let (done, result) = oneshot::channel();
    let started = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            lower_this_thread();
            let _ = done.send(work());
        })
        .map_err(|e| BackupError::Invalid(format!("cannot start {name}: {e}")));
    async move {
        started?;
        result
            .await
            .map_err(|_| BackupError::Invalid(format!("{name} stopped without an answer")))?
    }
}

/// Move the calling thread to nice 19 and the idle I/O class. Best effort: where the
/// kernel refuses (another OS, a sandbox), the backup runs at normal priority, as
/// before, and says so once in the log.
fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on this thread's own id, with no pointers.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
        // SAFETY: as above; PRIO_PROCESS with a thread id applies to that thread only.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, NICENESS) } != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "backup thread keeps its CPU priority");
        }
        // ioprio_set(IOPRIO_WHO_PROCESS, tid, IOPRIO_PRIO_VALUE(IOPRIO_CLASS_IDLE, 0)).
        const IOPRIO_WHO_PROCESS: libc::c_long = 1;
        const IOPRIO_CLASS_IDLE: libc::c_long = 3;
        const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
        // SAFETY: as above.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_ioprio_set,
                IOPRIO_WHO_PROCESS,
                tid as libc::c_long,
                IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
            )
        };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "backup thread keeps its I/O priority");
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_work_runs_at_the_lowest_priority_and_answers() {
        let nice = behind_foreground("backup-test".into(), || {
            // SAFETY: reads this thread's niceness; errno is cleared first because
            // -1 is also a valid answer.
            unsafe {
                *libc::__errno_location() = 0;
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                Ok(libc::getpriority(libc::PRIO_PROCESS, tid))
            }
        })
        .await
        .unwrap();
        assert_eq!(nice, NICENESS);
        let failed: Result<(), _> = behind_foreground("backup-test".into(), || {
            Err(BackupError::Invalid("no".into()))
        })
        .await;
        assert!(matches!(failed, Err(BackupError::Invalid(m)) if m == "no"));
    }
}
