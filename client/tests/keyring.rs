//! Following a store's keyring when root keys are lost or stolen: the
//! keyring a reader ends up trusting must be reached from where its trust
//! started, one rotation at a time, never from the newest version a pinned
//! key happens to sign.

use std::path::PathBuf;
use std::sync::Arc;

use boxcar_client::rollback::SerialState;
use boxcar_client::transport::DirTransport;
use boxcar_client::{Client, NetworkSettings, Silent, Trust};
use boxcar_signing::documents::{to_bytes, ExpirationEnforcement};
use boxcar_signing::keyring::{sign_keyring, KeyringDocument, KeyringEntry, Role, KEYRING_SCHEMA};
use boxcar_signing::{SecretKey, Sign, TrustedKeys};

fn key(seed: u8) -> SecretKey {
    SecretKey::from_seed([seed; 32])
}

/// Keyring `serial`: `roots` sign keyrings, `threshold` of them together;
/// `signer` signs everything else.
fn keyring(
    serial: u64,
    threshold: u32,
    roots: &[&SecretKey],
    signer: &SecretKey,
) -> KeyringDocument {
    let entry = |k: &&SecretKey| KeyringEntry::new(&k.public_key(), "2026-12-01T00:00:00Z", "test");
    KeyringDocument {
        schema: KEYRING_SCHEMA,
        serial,
        issued_at: "2026-12-01T00:00:00Z".into(),
        expires_at: "2099-12-01T00:00:00Z".into(),
        root: Role {
            threshold,
            keys: roots.iter().map(entry).collect(),
        },
        signing: Role {
            threshold: 1,
            keys: [signer].iter().map(entry).collect(),
        },
    }
}

/// A store directory whose keyring versions are written as a writer (or
/// someone who can write files into the store) would.
struct Store {
    _temp: tempfile::TempDir,
    root: PathBuf,
    state: PathBuf,
}

impl Store {
    fn new() -> Self {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().join("store");
        let state = temp.path().join("state.json");
        std::fs::create_dir_all(root.join("keys")).unwrap();
        Self {
            _temp: temp,
            root,
            state,
        }
    }

    fn write(&self, name: &str, doc: &KeyringDocument, by: &[&SecretKey]) {
        let bytes = to_bytes(doc);
        let signers: Vec<&dyn Sign> = by.iter().map(|k| *k as &dyn Sign).collect();
        let signatures = sign_keyring(&bytes, &signers).unwrap();
        std::fs::write(self.root.join(name), &bytes).unwrap();
        std::fs::write(self.root.join(format!("{name}.minisig")), signatures).unwrap();
    }

    /// Publishes `doc` as version `doc.serial` and as the current keyring.
    fn publish(&self, doc: &KeyringDocument, by: &[&SecretKey]) {
        self.write(&format!("keys/{}.json", doc.serial), doc, by);
        self.write("keys.json", doc, by);
    }

    fn client(&self) -> Client {
        Client::new(
            Box::new(DirTransport::new(&self.root)),
            NetworkSettings::default(),
            Arc::new(Silent),
        )
    }

    /// What a reader pinning `pinned` trusts; with `keep_state`, one that
    /// remembers what it accepted (as nodes do).
    fn trust(&self, pinned: &[&SecretKey], keep_state: bool) -> Result<Trust, String> {
        let pinned = TrustedKeys::new(pinned.iter().map(|k| k.public_key()));
        let mut state = SerialState::load(&self.state).unwrap();
        let now = time::OffsetDateTime::now_utc();
        self.client()
            .trust(
                &pinned,
                ExpirationEnforcement::Enforce,
                now,
                keep_state.then_some(&mut state),
            )
            .map_err(|e| e.to_string())
    }
}

/// The serial of the keyring such a reader ends up trusting.
fn serial(store: &Store, pinned: &[&SecretKey], keep_state: bool) -> u64 {
    store
        .trust(pinned, keep_state)
        .unwrap()
        .keyring
        .unwrap()
        .serial
}

fn signing_ids(trust: &Trust) -> Vec<String> {
    trust.keys.ids().iter().map(|id| id.to_string()).collect()
}

fn id_of(key: &SecretKey) -> String {
    key.key_id().to_string()
}

#[test]
fn one_root_key_of_two_cannot_sign_a_keyring_that_needs_only_itself() {
    let (a, b, ci, thief) = (key(1), key(2), key(3), key(9));
    let store = Store::new();
    store.publish(&keyring(1, 2, &[&a, &b], &ci), &[&a, &b]);
    for keep_state in [true, false] {
        let trust = store.trust(&[&a, &b], keep_state).unwrap();
        assert_eq!(signing_ids(&trust), [id_of(&ci)]);
    }
    // Whoever stole root key A writes the next keyring: A alone as root,
    // their own key as signer. It does not follow from the threshold of two.
    store.publish(&keyring(2, 1, &[&a], &thief), &[&a]);
    for keep_state in [true, false] {
        let err = store.trust(&[&a, &b], keep_state).unwrap_err();
        assert!(err.contains("needs 2 signatures, has 1"), "{err}");
    }
}

#[test]
fn a_removed_root_key_cannot_sign_a_keyring_for_readers_that_pinned_it() {
    let (old, new, ci, thief) = (key(1), key(2), key(3), key(9));
    let store = Store::new();
    store.publish(&keyring(1, 1, &[&old], &ci), &[&old]);
    store.publish(&keyring(2, 1, &[&old, &new], &ci), &[&old, &new]);
    store.publish(&keyring(3, 1, &[&new], &ci), &[&new]);
    // A reader pinned the old root before it was lost, and followed.
    assert_eq!(serial(&store, &[&old], true), 3);
    // The old root, removed from the keyring, signs a keyring of its own.
    store.publish(&keyring(4, 1, &[&old], &thief), &[&old]);
    for keep_state in [true, false] {
        let err = store.trust(&[&old], keep_state).unwrap_err();
        assert!(err.contains("keys/4.json"), "{err}");
        assert!(err.contains("previous keyring's root"), "{err}");
    }
    // A reader that pinned the new root refuses it too.
    let err = store.trust(&[&new], false).unwrap_err();
    assert!(err.contains("keys/4.json"), "{err}");
}

#[test]
fn a_reader_that_keeps_state_refuses_a_rewritten_history() {
    let (root, ci, thief) = (key(1), key(3), key(9));
    let store = Store::new();
    store.publish(&keyring(1, 1, &[&root], &ci), &[&root]);
    store.publish(&keyring(2, 1, &[&root], &ci), &[&root]);
    assert_eq!(serial(&store, &[&root], true), 2);
    // Someone with the root key and write access rewrites every version
    // into a chain of their own.
    store.publish(&keyring(1, 1, &[&root], &thief), &[&root]);
    store.publish(&keyring(2, 1, &[&root], &thief), &[&root]);
    store.publish(&keyring(3, 1, &[&root], &thief), &[&root]);
    let err = store.trust(&[&root], true).unwrap_err();
    assert!(
        err.contains("keys/2.json is not the keyring this machine accepted"),
        "{err}"
    );
    // A reader meeting the store for the first time cannot tell: the
    // README says to pin root keys to the threshold.
    let first_contact = store.trust(&[&root], false).unwrap();
    assert_eq!(signing_ids(&first_contact), [id_of(&thief)]);
}

#[test]
fn a_reader_that_keeps_state_walks_on_from_the_keyring_it_accepted() {
    let (first, second, ci) = (key(1), key(2), key(3));
    let store = Store::new();
    store.publish(&keyring(1, 1, &[&first], &ci), &[&first]);
    store.publish(&keyring(2, 1, &[&second], &ci), &[&first, &second]);
    assert_eq!(serial(&store, &[&first], true), 2);
    let state = std::fs::read_to_string(&store.state).unwrap();
    assert!(state.contains("keyrings"), "{state}");
    // With the first version gone, a reader starting from the first root
    // has nothing to start from; one that accepted serial 2 walks on.
    store.publish(&keyring(3, 1, &[&second], &ci), &[&second]);
    for name in ["keys/1.json", "keys/1.json.minisig"] {
        std::fs::remove_file(store.root.join(name)).unwrap();
    }
    let err = store.trust(&[&first], false).unwrap_err();
    assert!(
        err.contains("no version of the keyring is signed by the keys you pinned"),
        "{err}"
    );
    assert_eq!(serial(&store, &[&first], true), 3);
    // A store whose keyring went back behind what was accepted is refused.
    store.write(
        "keys.json",
        &keyring(2, 1, &[&second], &ci),
        &[&first, &second],
    );
    let err = store.trust(&[&first], true).unwrap_err();
    assert!(err.contains("rollback"), "{err}");
}

#[test]
fn a_keyring_with_more_versions_than_a_reader_walks_is_refused() {
    let (root, ci) = (key(1), key(3));
    let store = Store::new();
    store.publish(&keyring(1, 1, &[&root], &ci), &[&root]);
    store.write("keys.json", &keyring(5_000, 1, &[&root], &ci), &[&root]);
    let err = store.trust(&[&root], false).unwrap_err();
    assert!(err.contains("more versions than a reader walks"), "{err}");
}
