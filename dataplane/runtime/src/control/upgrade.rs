//! What the binary upgrade (`crate::upgrade`) reads of the control plane: the
//! configuration in force (handed to the next generation) and the workers' mailboxes (to
//! retire them).

use wsedge_command::Config;

use super::Shared;
use crate::worker::mailbox::Mailbox;

impl Shared {
    /// The configuration in force: its text, where it came from, and the parsed value.
    pub(crate) fn config_in_force(&self) -> (String, String, Config) {
        let current = self.current();
        (
            current.toml.clone(),
            current.source.clone(),
            current.config.clone(),
        )
    }

    pub(crate) fn mailboxes(&self) -> &[Mailbox] {
        &self.mailboxes
    }
}
