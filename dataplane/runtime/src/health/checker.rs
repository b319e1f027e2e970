//! The `wsedge-health` thread: runs every pool's active checks at their interval and ends
//! passive ejections whose time is over. Each check runs on a short-lived `wsedge-check`
//! thread (a check blocks up to its timeout; one slow origin must not delay the others), at
//! most one at a time per origin; its result goes straight into the pool, then wakes this
//! thread.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use super::{Registry, now_ms, probe};

/// The longest this thread sleeps (ejection ends are also applied lazily by `is_live`).
const MAX_SLEEP_MS: u64 = 200;

/// Starts the `wsedge-health` thread for `registry` (it runs for the life of the process).
pub(crate) fn start(registry: Arc<Registry>) -> std::io::Result<()> {
    let (wake, woken) = mpsc::channel::<()>();
    registry.set_wake(wake.clone());
    std::thread::Builder::new()
        .name("wsedge-health".to_owned())
        .spawn(move || {
            loop {
                let sleep = round(&registry, &wake);
                match woken.recv_timeout(Duration::from_millis(sleep)) {
                    Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        })?;
    Ok(())
}

/// Starts the checks that are due; returns how long to sleep until the next one (ms).
fn round(registry: &Registry, wake: &mpsc::Sender<()>) -> u64 {
    let now = now_ms();
    let mut next = now + MAX_SLEEP_MS;
    for pool in registry.pools() {
        pool.tick();
        let Some(check) = pool.settings().check else {
            continue;
        };
        let interval = u64::try_from(check.interval.as_millis()).unwrap_or(u64::MAX);
        for (index, slot) in pool.origins.iter().enumerate() {
            if slot.checking.load(Ordering::Acquire) {
                continue;
            }
            let due = slot.next_check.load(Ordering::Relaxed);
            if due > now {
                next = next.min(due);
                continue;
            }
            slot.checking.store(true, Ordering::Release);
            slot.next_check
                .store(now.saturating_add(interval), Ordering::Relaxed);
            next = next.min(now.saturating_add(interval));
            let (shared, wake, kind, addr) =
                (pool.clone(), wake.clone(), check.kind.clone(), slot.addr);
            let tls = pool.tls();
            let timeout = check.timeout;
            let spawned = std::thread::Builder::new()
                .name("wsedge-check".to_owned())
                .spawn(move || {
                    let result = probe::run(&kind, addr, timeout, tls.as_ref());
                    if let Err(failure) = result {
                        tracing::debug!(route = %shared.route, origin = %addr, failure = %failure.label(), "health check failed");
                    }
                    shared.check_result(index, result);
                    shared.origins[index].checking.store(false, Ordering::Release);
                    let _ = wake.send(());
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a health check thread");
                pool.origins[index].checking.store(false, Ordering::Release);
            }
        }
    }
    next.saturating_sub(now).clamp(1, MAX_SLEEP_MS)
}
