//! Whether the process a request waits for got a signal. fuser answers the kernel's
//! `FUSE_INTERRUPT` with ENOSYS, after which the kernel lets a waiting call (`F_SETLKW`,
//! `flock`) end only with its answer, so the mount watches the caller itself.

use std::time::Duration;

/// How often a long wait looks at its caller's signals.
const POLL: Duration = Duration::from_millis(20);

/// Resolves once thread `tid` has a signal pending that it does not block, or is gone.
pub async fn pending(tid: u32) {
    while !has_pending(tid) {
        tokio::time::sleep(POLL).await;
    }
}

fn has_pending(tid: u32) -> bool {
    // A caller that is gone waits for nothing any more.
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return true;
    };
    let mask = |field: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or(0)
    };
    (mask("SigPnd:") | mask("ShdPnd:")) & !mask("SigBlk:") != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_thread_has_nothing_pending_and_a_gone_one_is_done() {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        assert!(!has_pending(tid));
        assert!(has_pending(u32::MAX));
    }
}
