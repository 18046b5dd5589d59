//! Random sequences of store operations (publish, promote, renew, key
//! rotation, and each of them killed at a crash point) through the real
//! binary, against a model of what each channel should point at. After
//! every step (and the repair the next writer would do after a crash) the
//! store must verify, and a client pinned to the root key, keeping its
//! rollback state across the whole sequence, must resolve every channel to
//! the model's release: never to another, never refusing a good store.

mod common;

use std::path::PathBuf;

use common::*;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Publish,
    PromoteBeta,
    PromoteStable,
    Renew,
    Rotate,
    /// A publish killed at this point.
    CrashPublish(&'static str),
    /// A promotion to beta killed at this point.
    CrashPromote(&'static str),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Publish),
        2 => Just(Op::PromoteBeta),
        1 => Just(Op::PromoteStable),
        1 => Just(Op::Renew),
        1 => Just(Op::Rotate),
        2 => prop::sample::select(vec![
            "publish-copying",
            "publish-before-rename",
            "publish-before-listing",
            "publish-before-channel",
            "document-half-replaced",
            "publish-before-index",
        ])
        .prop_map(Op::CrashPublish),
        1 => prop::sample::select(vec!["document-half-replaced", "promote-before-readback"])
            .prop_map(Op::CrashPromote),
    ]
}

/// What each channel should point at, and the keys in use.
struct Model {
    lab: Lab,
    root: PathBuf,
    signer: PathBuf,
    next_version: u32,
    keys_made: u32,
    alpha: Option<String>,
    beta: Option<String>,
    stable: Option<String>,
}

impl Model {
    fn new() -> Self {
        let lab = Lab::new();
        let root = lab.new_key("root");
        lab.init_keyring(&root);
        Self {
            signer: lab.path("keys"),
            lab,
            root,
            next_version: 1,
            keys_made: 0,
            alpha: None,
            beta: None,
            stable: None,
        }
    }

    fn writer(&self, verb: &str) -> assert_cmd::Command {
        let mut command = self.lab.boxcar(&["--quiet", verb]);
        command
            .args(["--store", self.lab.store().to_str().unwrap()])
            .args(["--key", self.signer.join("boxcar.key").to_str().unwrap()])
            .args(["--trust", self.root.join("boxcar.pub").to_str().unwrap()]);
        command
    }

    fn publish(&mut self, crash_at: Option<&str>) -> Option<String> {
        let version = format!("1.{}", self.next_version);
        self.next_version += 1;
        let build = self.lab.build(&version, true);
        let mut command = self.writer("publish");
        command.args(["--build", build.to_str().unwrap(), "--channel", "alpha"]);
        if let Some(point) = crash_at {
            command.env("BOXCAR_CRASH_AT", point);
            assert!(!command.output().unwrap().status.success(), "{point}");
            return None;
        }
        command.assert().success();
        Some(version)
    }

    fn promote(&mut self, to: &str, crash_at: Option<&str>) {
        let mut command = self.writer("promote");
        command.args(["--to", to]);
        if let Some(point) = crash_at {
            command.env("BOXCAR_CRASH_AT", point);
            let output = command.output().unwrap();
            let wrote = String::from_utf8_lossy(&output.stderr).contains("crashing on purpose");
            if !wrote {
                // Nothing to promote, or nothing changed: it never reached
                // the crash point.
                assert!(
                    output.status.success()
                        || String::from_utf8_lossy(&output.stderr).contains("nothing to promote"),
                    "{}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            return;
        }
        let output = command.output().unwrap();
        let source_empty = match to {
            "beta" => self.alpha.is_none(),
            _ => self.beta.is_none(),
        };
        assert!(
            output.status.success() || source_empty,
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Publish => self.alpha = self.publish(None),
            Op::CrashPublish(point) => {
                let version = format!("1.{}", self.next_version);
                self.publish(Some(point));
                self.lab.repair().assert().success();
                // Only a crash after the channel moved leaves it moved.
                if *point == "publish-before-index" {
                    self.alpha = Some(version);
                }
            }
            Op::PromoteBeta => {
                self.promote("beta", None);
                self.beta = self.alpha.clone().or(self.beta.take());
            }
            Op::PromoteStable => {
                self.promote("stable", None);
                self.stable = self.beta.clone().or(self.stable.take());
            }
            Op::CrashPromote(point) => {
                self.promote("beta", Some(point));
                self.lab.repair().assert().success();
                if *point == "promote-before-readback" && self.alpha.is_some() {
                    self.beta = self.alpha.clone();
                }
            }
            Op::Renew => {
                self.writer("renew").arg("--all").assert().success();
            }
            Op::Rotate => {
                self.keys_made += 1;
                let new = self.lab.new_key(&format!("signer{}", self.keys_made));
                let public = new.join("boxcar.pub").display().to_string();
                let old = boxcar_signing::SecretKey::load(&self.signer.join("boxcar.key")).unwrap();
                self.lab
                    .keys("add", &[&self.root], &["--public", &public])
                    .assert()
                    .success();
                self.signer = new;
                self.writer("renew").arg("--all").assert().success();
                let id = boxcar_signing::Sign::key_id(&old).to_string();
                self.lab
                    .keys("remove", &[&self.root], &["--key-id", &id])
                    .assert()
                    .success();
            }
        }
    }

    /// The store verifies, and a careful client sees what the model says.
    fn check(&self, step: usize) {
        if self.alpha.is_none() && !self.lab.store().join("index.json").exists() {
            // Nothing published yet: there is no store to check.
            return;
        }
        let store = self.lab.store().display().to_string();
        let root = self.root.join("boxcar.pub").display().to_string();
        let verified = self
            .lab
            .boxcar(&["verify", "--store", &store, "--key", &root])
            .output()
            .unwrap();
        assert!(
            verified.status.success(),
            "step {step}: verify failed:\n{}",
            String::from_utf8_lossy(&verified.stdout)
        );
        for (channel, expected) in [
            ("alpha", &self.alpha),
            ("beta", &self.beta),
            ("stable", &self.stable),
        ] {
            let Some(expected) = expected else { continue };
            let output = self
                .lab
                .boxcar(&["--json", "download", "--store", &store, "--key", &root])
                .args(["--channel", channel, "--platform", "qemu"])
                .args(["--to", self.lab.path("client").to_str().unwrap()])
                .args(["--state", self.lab.path("client.json").to_str().unwrap()])
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "step {step}: {channel}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            assert_eq!(
                result["version"],
                expected.as_str(),
                "step {step}: {channel}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 12,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_store_operations_never_leave_a_state_a_client_gets_wrong(
        ops in prop::collection::vec(op(), 1..9)
    ) {
        let mut model = Model::new();
        for (step, op) in ops.iter().enumerate() {
            model.apply(op);
            model.check(step);
        }
    }
}
