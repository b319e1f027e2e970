//! How a connection is named: in the worker's slab, timer wheel and ring operations
//! ([`ConnId`]: slot and generation, plus a purpose for an owner tag), and outside the worker
//! (`wsedge_command::ConnectionId`, the one public encoding: worker, slot, generation, shown
//! as `1-42-7` by `wsedgectl` and the access log; its 64-bit form keys bus subscriptions).

use wsedge_command::ConnectionId;

/// A connection of one worker: its slab slot and the incarnation of that slot. A stale id
/// (its slot freed and reused) never matches the new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConnId {
    pub(crate) slot: u32,
    /// 24 bits used.
    pub(crate) generation: u32,
}

const GEN_MASK: u32 = 0x00ff_ffff;

/// Workers a public id can name (8 bits).
pub(crate) const MAX_WORKERS: usize = 256;

impl ConnId {
    pub(crate) fn new(slot: usize, generation: u32) -> ConnId {
        ConnId {
            slot: slot as u32,
            generation: generation & GEN_MASK,
        }
    }

    /// The public id of this connection of `worker`.
    pub(crate) fn connection_id(self, worker: usize) -> ConnectionId {
        ConnectionId::new(worker, self.slot as usize, self.generation)
    }

    /// The public id's 64-bit form (bus keys): unique per host while the process runs (a
    /// generation wraps after 16M reuses of the worker's slots).
    pub(crate) fn public(self, worker: usize) -> u64 {
        self.connection_id(worker).to_raw()
    }

    /// The worker and connection a public id names.
    pub(crate) fn from_connection_id(id: ConnectionId) -> (usize, ConnId) {
        (id.worker(), ConnId::new(id.slot(), id.generation()))
    }

    /// The worker and connection a public id's 64-bit form names.
    pub(crate) fn from_public(id: u64) -> (usize, ConnId) {
        ConnId::from_connection_id(ConnectionId::from_raw(id))
    }

    /// The worker's owner tag for its ring operations: the id, with the side or purpose in
    /// the top byte (which a slot id never uses).
    pub(crate) fn owner(self, purpose: u8) -> u64 {
        (u64::from(purpose) << 56) | (u64::from(self.generation) << 32) | u64::from(self.slot)
    }

    /// The connection and purpose of an owner tag.
    pub(crate) fn from_owner(owner: u64) -> (ConnId, u8) {
        (
            ConnId::new(owner as u32 as usize, (owner >> 32) as u32),
            (owner >> 56) as u8,
        )
    }
}

/// The next generation for a worker (24 bits, wrapping).
pub(crate) fn next_generation(g: u32) -> u32 {
    g.wrapping_add(1) & GEN_MASK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_ids_and_owner_tags_round_trip() {
        for (slot, generation, worker) in
            [(0, 0, 0), (u32::MAX as usize, GEN_MASK, 255), (77, 12, 3)]
        {
            let id = ConnId::new(slot, generation);
            assert_eq!(ConnId::from_public(id.public(worker)), (worker, id));
            for purpose in [0u8, 1, 7, 255] {
                assert_eq!(ConnId::from_owner(id.owner(purpose)), (id, purpose));
            }
        }
        assert_eq!(ConnId::new(1, GEN_MASK + 5).generation, 4);
        assert_eq!(next_generation(GEN_MASK), 0);
    }
}
