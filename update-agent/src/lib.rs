//! `boxcar-update`, the agent on every Boxcar Linux host: it follows the
//! host's channel in a release store, and when the channel moves (and the
//! host's wave has come) downloads the release's update, verifies every
//! byte, hands it to the image's own systemd-sysupdate, and reboots into
//! it when its strategy allows. A new boot counts only once it is healthy.
//!
//! It reads stores only through the release client library and trusts
//! only keys pinned in the image or added by the host's configuration.
//!
//! | module | what it owns |
//! |---|---|
//! | [`paths`] | every file and directory the agent reads or writes |
//! | [`config`] | `/usr/lib/boxcar/update.toml` and `/etc/boxcar/update.toml` |
//! | [`identity`] | the host's ids: for rollout waves and for lock servers |
//! | [`rollout`] | whether the host's wave has come |
//! | [`state`] | what the agent remembers between runs, and reports |
//! | [`staging`] | downloading, verifying and staging an update's files |
//! | [`uki`] | reading the kernel command line inside a staged UKI |
//! | [`install`] | the checks before installing, and systemd-sysupdate |
//! | [`strategy`] | when to reboot: immediately, in windows, with a lock, or never |
//! | [`fleet_lock`] | the FleetLock protocol, as Zincati speaks it |
//! | [`health`] | whether a boot is good enough to keep |
//! | [`check`] | one check of the channel, start to end |
//! | [`agent`] | the service: checks on a schedule, backs off on failures |
//! | [`host`] | the running system: its version, boot counting, reboots |

pub mod agent;
pub mod check;
pub mod config;
pub mod fleet_lock;
pub mod health;
pub mod host;
pub mod identity;
pub mod install;
pub mod paths;
pub mod rollout;
pub mod staging;
pub mod state;
pub mod strategy;
pub mod uki;

#[cfg(test)]
mod test_script;
