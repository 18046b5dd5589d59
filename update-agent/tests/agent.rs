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

/// A port on loopback that nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A fleet lock server that does not answer is a failure of the round
/// like a failed check: one journal line, the history, the last error, and
/// the backoff grows. The update still waits for its reboot.
#[test]
fn a_fleet_lock_server_that_is_down_is_a_recorded_failure() {
    let store = Store::new();
    let host = Host::new(&store, "1.0.0");
    host.configure(&format!(
        "[updates]\nstrategy = \"fleet_lock\"\n[updates.fleet_lock]\nbase_url = \"http://127.0.0.1:{}\"\n",
        closed_port()
    ));
    host.install_pending("2.0.0");
    host.boxcar_update(&["check"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "rebooting into 2.0.0 failed: asking the fleet lock at",
        ));
    let state = host.state_file();
    let error = state["last_error"]["message"].as_str().unwrap_or_default();
    assert!(error.contains("for a reboot slot"), "{state:#}");
    assert_eq!(state["failures_in_a_row"], 1);
    assert_eq!(state["phase"], "reboot-pending");
    let history = host.history();
    assert!(
        history
            .last()
            .unwrap()
            .starts_with("rebooting into 2.0.0 failed"),
        "{history:?}"
    );
    assert!(host.calls_of("systemctl").is_empty());

    host.boxcar_update(&["check"]).assert().code(1);
    assert_eq!(host.state_file()["failures_in_a_row"], 2);
}

/// `systemctl reboot` failing leaves the update waiting for its reboot,
/// not stuck at "rebooting": the failure is recorded and the next round
/// asks for the reboot again.
#[test]
fn a_failed_reboot_is_tried_again_in_the_next_round() {
    let store = Store::new();
    let host = Host::new(&store, "1.0.0");
    host.configure("");
    host.install_pending("2.0.0");
    host.boxcar_update(&["check"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("a test host does not reboot"));
    let state = host.state_file();
    assert_eq!(state["phase"], "reboot-pending", "{state:#}");
    assert_eq!(state["pending"]["version"], "2.0.0");
    let error = state["last_error"]["message"].as_str().unwrap_or_default();
    assert!(error.contains("a test host does not reboot"), "{state:#}");
    assert_eq!(host.calls_of("systemctl"), ["reboot --no-block"]);

    host.boxcar_update(&["check"]).assert().code(1);
    assert_eq!(host.calls_of("systemctl").len(), 2);
}

/// An update installs (systemd-sysupdate is a fake here), is pending, and
/// waits for its reboot; with strategy "off" the operator reboots.
#[test]
fn an_installed_update_waits_for_its_reboot() {
    let store = Store::new();
    let (_, digest) = store.publish("2.0.0");
    store.point_alpha("2.0.0", digest, 1, None, false);
    let host = Host::new(&store, "1.0.0");
    host.configure(&format!(
        "[store]\nurl = \"{}\"\nchannel = \"alpha\"\n[updates]\nstrategy = \"off\"\n",
        store.url
    ));
    host.fake_sysupdate("exit 0");
    host.boxcar_update(&["check"])
        .assert()
        .success()
        .stdout(predicate::str::contains("installed 2.0.0"));
    assert_eq!(host.sysupdate_calls(), ["--no-pager update 2.0.0"]);
    let state = host.state_file();
    assert_eq!(state["phase"], "reboot-pending", "{state:#}");
    assert_eq!(state["pending"]["version"], "2.0.0");
    let reboot_required = std::fs::read_to_string(host.path("run/reboot-required")).unwrap();
    assert!(reboot_required.contains("2.0.0"), "{reboot_required}");
    assert!(host.staged_files().is_empty(), "{:?}", host.staged_files());
}

/// A newer release that fails before anything is written to the idle slot
/// (here: its download does not match) leaves the update installed
/// earlier waiting for its reboot, and the reboot goes ahead.
#[test]
fn a_newer_update_that_fails_to_download_leaves_the_installed_one_to_reboot_into() {
    let store = Store::new();
    let (_, digest) = store.publish("2.0.0");
    store.point_alpha("2.0.0", digest, 1, None, false);
    let uki = store.path("releases/2.0.0/boxcar_2.0.0.efi.zst");
    let mut bytes = std::fs::read(&uki).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&uki, bytes).unwrap();
    let host = Host::new(&store, "1.0.0");
    let settings = |strategy: &str| {
        format!(
            "[store]\nurl = \"{}\"\nchannel = \"alpha\"\n[updates]\nstrategy = \"{strategy}\"\n",
            store.url
        )
    };
    host.configure(&settings("off"));
    host.install_pending("1.5.0");
    host.boxcar_update(&["check"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "does not match the signed release",
        ));
    let state = host.state_file();
    assert_eq!(state["phase"], "reboot-pending", "{state:#}");
    assert_eq!(state["pending"]["version"], "1.5.0");
    assert!(host.path("run/reboot-required").exists());

    host.configure(&settings("immediate"));
    host.fake_tool("systemctl", "exit 0");
    host.boxcar_update(&["check"]).assert().code(1);
    assert_eq!(host.calls_of("systemctl"), ["reboot --no-block"]);
    let state = host.state_file();
    assert_eq!(state["phase"], "rebooting", "{state:#}");
    assert!(host.history().contains(&"rebooting into 1.5.0".to_owned()));
}

/// systemd-sysupdate failing part way may have overwritten the slot of
/// the update installed earlier: that one no longer waits for its reboot,
/// and the error and history say so.
#[test]
fn a_failed_install_drops_the_earlier_update_it_may_have_overwritten() {
    let store = Store::new();
    let (_, digest) = store.publish("2.0.0");
    store.point_alpha("2.0.0", digest, 1, None, false);
    let host = Host::new(&store, "1.0.0");
    host.install_pending("1.5.0");
    host.fake_sysupdate("echo 'Failed to write partition' >&2; exit 1");
    let dropped = "1.5.0 no longer waits for its reboot (installing 2.0.0 may have overwritten part of its slot)";
    host.boxcar_update(&["check"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(dropped));
    assert_eq!(host.sysupdate_calls(), ["--no-pager update 2.0.0"]);
    let state = host.state_file();
    assert_eq!(state["phase"], "idle", "{state:#}");
    assert!(state["pending"].is_null(), "{state:#}");
    let error = state["last_error"]["message"].as_str().unwrap_or_default();
    assert!(error.contains(dropped), "{state:#}");
    assert!(error.contains("Failed to write partition"), "{state:#}");
    assert!(!host.path("run/reboot-required").exists());
    assert!(host.calls_of("systemctl").is_empty());
    assert!(host.staged_files().is_empty(), "{:?}", host.staged_files());
}

/// The agent dies while systemd-sysupdate writes the slot an earlier update
/// waits in: the next round does not reboot into that slot.
#[test]
fn an_install_cut_short_leaves_no_half_written_update_to_reboot_into() {
    let store = Store::new();
    let (_, digest) = store.publish("2.0.0");
    store.point_alpha("2.0.0", digest, 1, None, false);
    let host = Host::new(&store, "1.0.0");
    host.install_pending("1.5.0");
    host.fake_sysupdate("kill -9 $PPID; sleep 5");
    host.boxcar_update(&["check"]).assert().failure();
    let state = host.state_file();
    assert!(state["pending"].is_null(), "{state:#}");
    assert!(
        host.history()
            .iter()
            .any(|m| m.contains("installing 2.0.0 over 1.5.0")),
        "{:?}",
        host.history()
    );
    // The store no longer offers anything new: nothing is installed, and
    // nothing reboots.
    store.point_alpha("1.0.0", store.publish("1.0.0").1, 2, None, false);
    host.boxcar_update(&["check"]).assert().success();
    assert!(
        host.calls_of("systemctl").is_empty(),
        "{:?}",
        host.calls_of("systemctl")
    );
}

/// An update waiting for its maintenance window asks every few minutes;
/// the history keeps the wait once, not once a round.
#[test]
fn waiting_for_a_window_is_kept_in_the_history_once() {
    let store = Store::new();
    let host = Host::new(&store, "1.0.0");
    // A one-minute window half a day from now, every day.
    let hour = (time::OffsetDateTime::now_utc().hour() + 12) % 24;
    host.configure(&format!(
        "[updates]\nstrategy = \"periodic\"\n[[updates.periodic.window]]\n\
         days = [\"Mon\", \"Tue\", \"Wed\", \"Thu\", \"Fri\", \"Sat\", \"Sun\"]\n\
         start_time = \"{hour:02}:00\"\nlength_minutes = 1\n"
    ));
    host.install_pending("2.0.0");
    for _ in 0..3 {
        host.boxcar_update(&["check"])
            .assert()
            .success()
            .stdout(predicate::str::contains("not rebooting yet"));
    }
    let waits = host
        .history()
        .iter()
        .filter(|m| m.contains("not rebooting yet"))
        .count();
    assert_eq!(waits, 1, "{:?}", host.history());
}
