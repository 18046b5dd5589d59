//! The node agent in the image: `boxcar-update` (built from this workspace,
//! found next to `boxcar` unless named), the store keys it pins (the
//! project's `signing/keys/*.pub`, or the keys a build is given: a test's
//! key is a build input, never a secret), and its defaults (the channel the
//! build is for, the store if one is named). Written as a file tree mkosi
//! merges into the image.

use std::fs;
use std::path::{Path, PathBuf};

use crate::channel::ChannelName;
use crate::records::buildinfo::AgentRecord;
use anyhow::{bail, Context, Result};
use boxcar_client::transport::StoreLocation;
use boxcar_signing::PublicKey;

/// The agent's program name, installed as /usr/bin/boxcar-update.
pub const AGENT_PROGRAM: &str = "boxcar-update";

/// What the build puts into the image for the agent, resolved and checked.
#[derive(Clone, Debug)]
pub struct AgentInputs {
    pub binary: PathBuf,
    pub keys: Vec<(PathBuf, PublicKey)>,
    pub store: Option<String>,
}

impl AgentInputs {
    /// Resolves the agent's inputs: `binary` or the one next to this
    /// program; `keys` or the project's `signing/keys/*.pub`.
    pub fn resolve(
        binary: Option<&Path>,
        keys: &[PathBuf],
        store: Option<&str>,
        project_root: &Path,
    ) -> Result<Self> {
        let binary = match binary {
            Some(binary) => binary.to_owned(),
            None => std::env::current_exe()
                .context("finding this program")?
                .with_file_name(AGENT_PROGRAM),
        };
        if !binary.is_file() {
            bail!(
                "the node agent {} does not exist: build it with `cargo build --release -p boxcar-update` (next to boxcar), or pass --update-agent FILE",
                binary.display()
            );
        }
        let key_files = if keys.is_empty() {
            boxcar_signing::keys::public_key_files(&project_root.join("signing/keys"))
        } else {
            keys.to_vec()
        };
        let mut loaded = Vec::new();
        for file in key_files {
            let key = PublicKey::load(&file)
                .with_context(|| format!("loading store key {}", file.display()))?;
            loaded.push((file, key));
        }
        if let Some(store) = store {
            check_store(store)?;
        }
        Ok(Self {
            binary,
            keys: loaded,
            store: store.map(str::to_owned),
        })
    }

    /// Writes the tree into `dir` (emptied first).
    pub fn write_tree(&self, dir: &Path, channel: &ChannelName) -> Result<()> {
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
        let bin = dir.join("usr/bin");
        let lib = dir.join("usr/lib/boxcar");
        let keys = lib.join("update-keys");
        for d in [&bin, &keys] {
            fs::create_dir_all(d)?;
        }
        fs::copy(&self.binary, bin.join(AGENT_PROGRAM))
            .with_context(|| format!("copying {}", self.binary.display()))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(bin.join(AGENT_PROGRAM), fs::Permissions::from_mode(0o755))?;
        for (_, key) in &self.keys {
            fs::write(keys.join(format!("{}.pub", key.id())), key.to_file_text())?;
        }
        fs::write(lib.join("update.toml"), self.defaults(channel))?;
        Ok(())
    }

    /// /usr/lib/boxcar/update.toml. The values are written as TOML strings
    /// by the toml crate, so whatever they hold, the file parses.
    fn defaults(&self, channel: &ChannelName) -> String {
        let string = |text: &str| toml::Value::String(text.to_owned()).to_string();
        format!(
            "# The image's update defaults, written by `boxcar build`. Set any of\n\
             # them in /etc/boxcar/update.toml (provisioning can write it).\n\
             [store]\n\
             # Empty: the host follows no store until one is configured.\n\
             url = {}\n\
             # The channel the image was built for.\n\
             channel = {}\n",
            string(self.store.as_deref().unwrap_or_default()),
            string(channel.as_str())
        )
    }

    pub fn record(&self, channel: &ChannelName) -> Result<AgentRecord> {
        let (sha256, size) = boxcar_signing::sha256_file(&self.binary)?;
        Ok(AgentRecord {
            sha256,
            size,
            keys: self.keys.iter().map(|(_, k)| k.id().to_string()).collect(),
            store: self.store.clone(),
            channel: channel.clone(),
        })
    }
}

/// Refuses a store the image's agent could not follow: one the agent's own
/// parsing (the client's) refuses, a relative directory (relative to
/// whatever directory the agent runs in), and any control character or
/// surrounding space (a trailing `\r` is invisible in a terminal, and the
/// agent would fetch from a URL that ends in it).
fn check_store(store: &str) -> Result<()> {
    let refuse = |why: &str| -> Result<()> {
        bail!("--update-store {store:?} is not a store the image's agent can follow: {why}")
    };
    if store.is_empty() || store.trim() != store || store.chars().any(char::is_control) {
        return refuse("it is empty, or holds spaces around it or control characters");
    }
    match StoreLocation::parse(store) {
        Err(error) => refuse(&error.to_string()),
        Ok(StoreLocation::Directory(path)) if !path.is_absolute() => {
            refuse("a directory must be an absolute path")
        }
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_carries_the_agent_its_keys_and_defaults() {
        let temp = tempfile::tempdir().unwrap();
        let agent = temp.path().join("boxcar-update");
        fs::write(&agent, b"\x7fELF an agent").unwrap();
        let key = boxcar_signing::SecretKey::from_seed([3; 32]);
        let key_file = temp.path().join("store.pub");
        use boxcar_signing::Sign;
        fs::write(&key_file, key.public_key().to_file_text()).unwrap();
        let inputs = AgentInputs::resolve(
            Some(&agent),
            std::slice::from_ref(&key_file),
            Some("https://updates.example.com/boxcar"),
            temp.path(),
        )
        .unwrap();
        let tree = temp.path().join("tree");
        let channel: ChannelName = "beta".parse().unwrap();
        inputs.write_tree(&tree, &channel).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let bin = fs::metadata(tree.join("usr/bin/boxcar-update")).unwrap();
        assert_eq!(bin.permissions().mode() & 0o777, 0o755);
        let pinned = tree.join(format!("usr/lib/boxcar/update-keys/{}.pub", key.key_id()));
        assert_eq!(PublicKey::load(&pinned).unwrap(), key.public_key());
        let defaults = fs::read_to_string(tree.join("usr/lib/boxcar/update.toml")).unwrap();
        let parsed: toml::Table = toml::from_str(&defaults).unwrap();
        assert_eq!(parsed["store"]["channel"].as_str(), Some("beta"));
        assert_eq!(
            parsed["store"]["url"].as_str(),
            Some("https://updates.example.com/boxcar")
        );
        let record = inputs.record(&channel).unwrap();
        assert_eq!(record.keys, [key.key_id().to_string()]);
    }

    #[test]
    fn a_missing_agent_or_a_bad_store_is_refused() {
        let temp = tempfile::tempdir().unwrap();
        let err = AgentInputs::resolve(Some(&temp.path().join("nope")), &[], None, temp.path())
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("cargo build --release -p boxcar-update"),
            "{err}"
        );
        let agent = temp.path().join("agent");
        fs::write(&agent, b"x").unwrap();
        let err = AgentInputs::resolve(Some(&agent), &[], Some("a\"b"), temp.path()).unwrap_err();
        assert!(
            err.to_string()
                .contains("is not a store the image's agent can follow"),
            "{err}"
        );
    }

    #[test]
    fn a_store_is_refused_unless_the_agent_can_follow_it() {
        for bad in [
            "https://updates.example.com/boxcar\r",
            "https://updates.example.com/\tboxcar",
            "https://updates.example.com/boxcar\u{7f}",
            " https://updates.example.com/boxcar",
            "",
            "https://[::1",
            "ftp://updates.example.com/boxcar",
            "s3://bucket/boxcar",
            "stores/good",
            "file://stores/good",
        ] {
            let err = check_store(bad).unwrap_err();
            assert!(
                err.to_string().contains("can follow"),
                "{bad:?} was not refused well: {err}"
            );
        }
        for good in [
            "https://updates.example.com/boxcar",
            "http://10.0.2.2:8080/stores/good",
            "/srv/boxcar-store",
            "file:///srv/boxcar-store",
        ] {
            check_store(good).unwrap();
        }
    }

    #[test]
    fn the_defaults_are_toml_whatever_the_store_holds() {
        let inputs = AgentInputs {
            binary: PathBuf::from("/nonexistent"),
            keys: Vec::new(),
            store: Some(r#"https://updates.example.com/a"b\c"#.to_owned()),
        };
        let channel: ChannelName = "beta".parse().unwrap();
        let parsed: toml::Table = toml::from_str(&inputs.defaults(&channel)).unwrap();
        assert_eq!(
            parsed["store"]["url"].as_str(),
            Some(r#"https://updates.example.com/a"b\c"#)
        );
        assert_eq!(parsed["store"]["channel"].as_str(), Some("beta"));
    }
}
