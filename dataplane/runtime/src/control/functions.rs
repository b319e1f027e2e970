//! The control socket's JavaScript function requests: `functions_list` (each function's
//! version, live sockets and counters, summed over the workers; also part of `stats` and of
//! the metrics) and `function_deploy` (new code for a `js` route, live).
//!
//! A deploy is a configuration change: the route's `script` is set to the new module in the
//! configuration text in force and the result applied like any other. So the module is
//! loaded and run once in a scratch runtime before anything changes (a syntax error, a
//! failing import or a throwing module is refused with its `file:line:column`, and the old
//! version keeps serving), every worker then deploys it as the function's next version (new
//! connections get it; live ones finish on theirs), and nothing is dropped. Through the
//! control process the edit is persisted in its state file, so it survives a restart.

use wsedge_command::wire::server::Failure;
use wsedge_command::wire::{Applied, ErrorKind, FunctionRow};

use super::Shared;
use crate::worker::mailbox::WorkerReport;

impl Shared {
    /// Each function, summed over the workers.
    pub(super) fn functions(&self) -> Result<Vec<FunctionRow>, Failure> {
        Ok(function_rows(&self.reports()?))
    }

    /// Points route `route` at the module `script` and applies the result; see the module
    /// docs.
    pub(super) fn deploy(&self, route: &str, script: &str) -> Result<Applied, Failure> {
        let (toml, source) = {
            let current = self.current();
            (current.toml.clone(), current.source.clone())
        };
        let toml = wsedge_command::edit::set_script(&toml, route, script).map_err(|m| {
            let kind = if m.starts_with("no route") {
                ErrorKind::NotFound
            } else {
                ErrorKind::BadRequest
            };
            Failure::new(kind, m)
        })?;
        // The source names the file relative scripts resolve against: kept, marked edited.
        let source = if source.ends_with(" + live edits") {
            source
        } else {
            format!("{source} + live edits")
        };
        let applied = self.apply(toml, Some(source))?;
        tracing::info!(function = route, script, version = ?applied.version, "function deployed on the control socket");
        Ok(applied)
    }
}

/// The functions of every worker's report, summed by name (sorted by name).
pub(super) fn function_rows(reports: &[WorkerReport]) -> Vec<FunctionRow> {
    let mut rows: std::collections::BTreeMap<&str, FunctionRow> = Default::default();
    for report in reports {
        for (name, s) in &report.functions {
            let row = FunctionRow {
                name: name.clone(),
                version: s.version,
                sockets: s.sockets,
                invocations: s.invocations,
                errors: s.errors,
                interrupts: s.interrupts,
                cpu_us: s.cpu_us,
                memory_bytes: s.memory_bytes,
                restarts: s.restarts,
            };
            rows.entry(name.as_str())
                .and_modify(|r| r.add(&row))
                .or_insert(row);
        }
    }
    rows.into_values().collect()
}
