//! `boxcar footprint` reads where /usr's bytes go from a build's
//! build.json: the biggest packages, directories and files, as text or
//! JSON, and a clear error for a build made without the footprint.

mod common;

use common::{edit_json, Lab};
use predicates::prelude::*;

#[test]
fn footprint_lists_the_biggest_packages_directories_and_files() {
    let lab = Lab::new();
    let build = lab.build("1.0.0", true);
    let build_arg = build.to_str().unwrap();
    lab.boxcar(&["footprint", "--build", build_arg])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("has no footprint"));

    let footprint = serde_json::json!({
        "bytes": 3_000_000,
        "files": 3,
        "packages": [
            { "name": "linux-image-6.12", "bytes": 2_000_000, "files": 1 },
            { "name": "containerd", "bytes": 1_000_000, "files": 2 },
        ],
        "directories": [
            { "name": "/usr/lib", "bytes": 2_000_000, "files": 1 },
            { "name": "/usr/bin", "bytes": 1_000_000, "files": 2 },
        ],
        "biggest_files": [
            { "name": "/usr/lib/modules/6.12/vmlinuz", "bytes": 2_000_000, "files": 1 },
            { "name": "/usr/bin/runc", "bytes": 600_000, "files": 1 },
        ],
    });
    edit_json(&build.join("build.json"), |info| {
        info["usr"]["footprint"] = footprint.clone();
    });

    lab.boxcar(&["footprint", "--build", build_arg, "--top", "1"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("2.9 MiB in 3 files")
                .and(predicate::str::contains("66.7%"))
                .and(predicate::str::contains("linux-image-6.12"))
                .and(predicate::str::contains("/usr/lib"))
                .and(predicate::str::contains("/usr/lib/modules/6.12/vmlinuz"))
                .and(predicate::str::contains("containerd").not())
                .and(predicate::str::contains("runc").not()),
        );
    let json = lab
        .boxcar(&["--json", "footprint", "--build", build_arg])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let printed: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(printed["usr"], footprint);
    assert!(printed["initrd"].is_null());
}
