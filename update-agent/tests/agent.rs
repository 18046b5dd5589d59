//! The service and the reboot step, through the real binary: `boxcar-update
//! agent` and `check` take turns under one lock, and every failure on the
//! way to a reboot is recorded and tried again. Reboots go to a fake
//! `systemctl` (see `Host::fake_tool`).

mod common;

use common::*;
use predicates::prelude::*;

/// The service holds the lock only for a round: while it sleeps between
/// rounds, `boxcar-update check` runs at once.
#[test]
fn check_runs_while_the_service_sleeps_between_rounds() {
    let store = Store::new();
    let host = Host::new(&store, "1.0.0");
    host.configure(
        "[agent]\nfirst_check_seconds = 0\ncheck_interval_seconds = 3600\njitter_seconds = 0\n",
    );
    let _service = host.start_service();
    host.wait_for_state("the service's first check", |state| {
        state["last_check"].is_object()
    });
    host.boxcar_update(&["check"])
        .assert()
        .success()
        .stdout(predicate::str::contains("not following a channel"));
}

/// A symlink left where the lock file goes is refused, not followed: the
/// agent creates and locks no file elsewhere.
#[test]
fn a_symlink_in_place_of_the_lock_file_is_refused() {
    let store = Store::new();
    let host = Host::new(&store, "1.0.0");
    host.configure("");
    let elsewhere = host.path("elsewhere");
    std::fs::create_dir_all(host.path("var/lib/boxcar-update")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, host.path("var/lib/boxcar-update/lock")).unwrap();
    host.boxcar_update(&["check"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "it is a symlink, which is never followed",
        ));
    assert!(!elsewhere.exists());
}
