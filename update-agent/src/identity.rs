//! The host's ids, derived from its machine id so they are stable across
//! reboots and updates, and keyed so they do not reveal it (as systemd's
//! app-specific ids do): one for lock servers, one for rollout waves.

use anyhow::{bail, Context, Result};
use blake2::digest::{KeyInit, Mac};
use blake2::Blake2bMac512;

use crate::paths::Paths;

/// The host as the agent presents it.
#[derive(Clone, Debug, PartialEq)]
pub struct Identity {
    /// What a FleetLock server knows the host by (32 hex digits).
    pub node_id: String,
    /// Where the host stands in every rollout: in [0, 1). A wave open to
    /// p % of the fleet takes the hosts below p / 100.
    pub position: f64,
}

impl Identity {
    pub fn load(paths: &Paths) -> Result<Self> {
        let path = paths.machine_id();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the machine id from {}", path.display()))?;
        let machine_id = text.trim();
        if machine_id.len() != 32 || !machine_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("{} does not hold a machine id", path.display());
        }
        Ok(Self::of(machine_id))
    }

    /// The ids of the host whose machine id is `machine_id`.
    pub fn of(machine_id: &str) -> Self {
        let node = keyed(machine_id, b"boxcar-update fleet-lock id");
        let rollout = keyed(machine_id, b"boxcar-update rollout position");
        let position_bits = u64::from_be_bytes(rollout[..8].try_into().expect("8 bytes"));
        Self {
            node_id: hex::encode(&node[..16]),
            position: (position_bits >> 11) as f64 / (1u64 << 53) as f64,
        }
    }
}

fn keyed(machine_id: &str, purpose: &[u8]) -> Vec<u8> {
    let mut mac = <Blake2bMac512 as KeyInit>::new_from_slice(purpose).expect("a short key fits");
    mac.update(machine_id.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_distinct_and_hide_the_machine_id() {
        let a = Identity::of("0123456789abcdef0123456789abcdef");
        assert_eq!(a, Identity::of("0123456789abcdef0123456789abcdef"));
        let b = Identity::of("0123456789abcdef0123456789abcdee");
        assert_ne!(a.node_id, b.node_id);
        assert_ne!(a.position, b.position);
        assert!(!a.node_id.contains("0123456789abcdef"));
        assert!((0.0..1.0).contains(&a.position));
    }
}
