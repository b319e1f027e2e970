//! systemd's watchdog for the dataplane (`WatchdogSec=` in wsedge.service): a thread that,
//! once every half interval, asks every worker for a report through its mailbox (as
//! `wsedgectl status` does) and sends `WATCHDOG=1` only when all of them answered. A worker
//! stuck in a loop or blocked in a syscall stops the pings, and systemd restarts the
//! service: the ping proves the workers turn, not merely that the process exists.

use std::sync::Arc;

use super::Shared;

/// Starts the watchdog thread when the service manager asked for pings.
pub(super) fn start(shared: Arc<Shared>) -> std::io::Result<()> {
    let Some(period) = wsedge_command::notify::watchdog_period() else {
        return Ok(());
    };
    std::thread::Builder::new()
        .name("wsedge-watchdog".to_owned())
        .spawn(move || {
            loop {
                // Replaced by a binary upgrade: the new generation is the one watched.
                if shared.upgrade.retired() {
                    return;
                }
                match shared.reports() {
                    Ok(_) => wsedge_command::notify::watchdog_ping(),
                    Err(f) => tracing::error!(
                        error = %f.message,
                        "a worker did not answer: no watchdog ping (systemd restarts wsedge if this lasts)"
                    ),
                }
                std::thread::sleep(period);
            }
        })?;
    tracing::info!(
        ?period,
        "systemd watchdog: pinging after every worker answered"
    );
    Ok(())
}
