//! The fleet's shapes on the wire: [`FleetView`], how `wsedgectl daemon` reports its fleet
//! configuration in the daemon's `status`, and [`HostStatus`], the JSON each host keeps under
//! its status key in etcd (read back by `wsedgectl fleet status`). docs/operations.md
//! ("Fleet configuration from etcd") describes both.

use serde::{Deserialize, Serialize};

/// The daemon's view of the fleet document (in [`super::DaemonStatus`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetView {
    /// etcd client URLs.
    pub etcd: Vec<String>,
    /// The document's key.
    pub key: String,
    /// This host's name in the fleet.
    pub host: String,
    /// Whether the last call to etcd succeeded.
    pub etcd_reachable: bool,
    #[serde(default)]
    pub etcd_error: Option<String>,
    /// The revision of the newest document seen (none: no document, or not read yet).
    #[serde(default)]
    pub document_revision: Option<i64>,
    #[serde(default)]
    pub document_hash: Option<String>,
    /// The revision of the document the desired configuration was built from.
    #[serde(default)]
    pub applied_revision: Option<i64>,
    #[serde(default)]
    pub applied_hash: Option<String>,
    /// The newest document, if it was refused (the last good one keeps serving).
    #[serde(default)]
    pub refused_revision: Option<i64>,
    #[serde(default)]
    pub refused_error: Option<String>,
    /// How often the watch had to read the document again because etcd had compacted the
    /// revision it was resuming from.
    #[serde(default)]
    pub compactions: u64,
}

/// One host's status in etcd (`<prefix>/<cluster>/hosts/<host>`), under a lease.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    pub host: String,
    /// `ok`, `refused` (the newest document was refused; the last good one serves),
    /// `out_of_sync` (the dataplane does not run the desired version yet) or
    /// `dataplane_unreachable`.
    pub health: String,
    #[serde(default)]
    pub applied_revision: Option<i64>,
    #[serde(default)]
    pub applied_hash: Option<String>,
    #[serde(default)]
    pub refused_revision: Option<i64>,
    #[serde(default)]
    pub refused_error: Option<String>,
    /// [`super::config_hash`] of the daemon's desired configuration (the daemon does not
    /// number configurations; the dataplane does).
    pub desired_hash: String,
    /// The version the dataplane runs (none: unreachable).
    #[serde(default)]
    pub dataplane_config_version: Option<u64>,
    /// The dataplane's build (`wsedge --version`), none when unreachable.
    #[serde(default)]
    pub wsedge_build: Option<String>,
    pub wsedgectl_build: String,
    #[serde(default)]
    pub live: Option<u64>,
    /// Unix seconds of the last change of this status.
    pub since: u64,
}

impl HostStatus {
    /// The same status without its timestamp (to tell whether it changed).
    pub fn same_as(&self, other: &HostStatus) -> bool {
        HostStatus {
            since: 0,
            ..self.clone()
        } == HostStatus {
            since: 0,
            ..other.clone()
        }
    }
}
