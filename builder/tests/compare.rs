//! `boxcar compare` on two builds: identical builds pass; a build whose
//! inputs and bits differ names the inputs, the outputs, and the partition
//! holding the first differing byte, and exits 1; a file that no longer
//! matches its build.json is an error.

mod common;

use common::{edit_json, Lab};
use predicates::prelude::*;

#[test]
fn identical_builds_compare_equal_and_differences_are_named_and_placed() {
    let (first, second) = (Lab::new(), Lab::new());
    let a = first.full_build("1.0.0", 64 * 1024);
    let b = second.full_build("1.0.0", 64 * 1024);
    let (a_arg, b_arg) = (a.to_str().unwrap(), b.to_str().unwrap());
    first
        .boxcar(&["compare", "--build", a_arg, "--with", b_arg])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("inputs: the same")
                .and(predicate::str::contains("outputs: 11 of 11 identical")),
        );

    // The second build used a newer package and its AWS disk differs in
    // one byte of its /usr partition.
    let raw = b.join("boxcar-1.0.0-aws.raw");
    let mut bytes = std::fs::read(&raw).unwrap();
    bytes[40_000] ^= 0xff;
    std::fs::write(&raw, &bytes).unwrap();
    let (sha256, _) = boxcar_signing::sha256_file(&raw).unwrap();
    edit_json(&b.join("build.json"), |info| {
        info["packages"] = serde_json::json!([
            { "name": "containerd", "version": "1.7.2", "architecture": "amd64" }
        ]);
        info["disk"]["partition_table"]["partitions"] = serde_json::json!([{
            "number": 2, "role": "usr-a", "type": "usr-x86-64",
            "type_uuid": "8484680c-9521-48c6-9c11-b0720656f69e", "label": "usr-a",
            "uuid": "0fc63daf-8483-4772-8e79-3d69d8477de4",
            "offset": 32_768, "size": 16_384, "flags": []
        }]);
        for artifact in info["artifacts"].as_array_mut().unwrap() {
            if artifact["file"] == "boxcar-1.0.0-aws.raw" {
                artifact["sha256"] = sha256.to_string().into();
            }
        }
    });

    // Placed by the partition table of the build named first.
    second
        .boxcar(&["compare", "--build", b_arg, "--with", a_arg])
        .assert()
        .code(1)
        .stdout(
            predicate::str::contains("package containerd:amd64: 1.7.2 | (none)")
                .and(predicate::str::contains("outputs: 10 of 11 identical"))
                .and(predicate::str::contains(
                    "boxcar-1.0.0-aws.raw: first differs at byte 40000 \
                     (partition 2 (usr-a, label \"usr-a\") + 7232)",
                ))
                .and(predicate::str::contains("explain: diffoscope")),
        )
        .stderr(predicate::str::contains(
            "the builds differ in 1 of 11 outputs",
        ));

    let output = first
        .boxcar(&["--json", "compare", "--build", a_arg, "--with", b_arg])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let report: serde_json::Value = serde_json::from_slice(&output).unwrap();
    assert_eq!(report["identical"], false);
    let aws = report["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "boxcar-1.0.0-aws.raw")
        .unwrap();
    assert_eq!(aws["same"], false);
    assert_eq!(aws["first_difference"]["offset"], 40_000);
    // The first build has no partition table to place it in.
    assert_eq!(
        aws["first_difference"]["within"],
        "the partition table (outside every partition)"
    );
    assert_eq!(report["inputs"][0]["input"], "package containerd:amd64");
}

#[test]
fn a_file_only_one_build_has_is_listed_and_a_missing_build_is_an_error() {
    let (first, second) = (Lab::new(), Lab::new());
    let a = first.build("1.0.0", true);
    let b = second.full_build("1.0.0", 4096);
    let (a_arg, b_arg) = (a.to_str().unwrap(), b.to_str().unwrap());
    first
        .boxcar(&["compare", "--build", a_arg, "--with", b_arg])
        .assert()
        .code(1)
        .stdout(
            predicate::str::contains("boxcar-1.0.0-pxe.ipxe: only in")
                .and(predicate::str::contains("platform table")),
        );
    // A file changed after its build is not a difference but an error.
    std::fs::write(b.join("boxcar-1.0.0-pxe.ipxe"), "#!ipxe\nchain evil\n").unwrap();
    first
        .boxcar(&["compare", "--build", a_arg, "--with", b_arg])
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("boxcar-1.0.0-pxe.ipxe does not match the sha256")
                .and(predicate::str::contains("changed after the build")),
        );
    // A name in build.json that would lead out of the build directory.
    edit_json(&b.join("build.json"), |info| {
        info["artifacts"][0]["file"] = "../../etc/passwd".into();
    });
    first
        .boxcar(&["compare", "--build", a_arg, "--with", b_arg])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("build.json file name"));
    let missing = first.path("nowhere");
    first
        .boxcar(&[
            "compare",
            "--build",
            a_arg,
            "--with",
            missing.to_str().unwrap(),
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("a build directory?"));
}
