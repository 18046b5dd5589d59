//! The release store on disk: a directory tree served as static files.
//!
//! ```text
//! STORE/keys.json (+ .minisig)
//! STORE/index.json (+ .minisig)
//! STORE/channels/<channel>.json (+ .minisig)
//! STORE/releases/<version>/{artifacts, evidence/, SHA256SUMS, release.json} (+ .minisig)
//! ```
//!
//! Writers take a lock (`.lock`). A release is assembled in
//! `releases/.<version>.partial` and renamed into place whole. A signed
//! document and its signature are two files; they are replaced as a pair
//! through a journal: if a writer dies between the two renames, the next
//! writer (or `boxcar verify`) puts the old pair back, so the store is as
//! it was before the interrupted operation.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Suffix of a detached signature.
pub const SIGNATURE_SUFFIX: &str = ".minisig";

/// A store directory this process may write to.
#[derive(Clone, Debug)]
pub struct Store {
    pub root: PathBuf,
}

/// Held while writing: one writer at a time.
pub struct StoreLock {
    _file: File,
    recovered: Vec<String>,
}

impl StoreLock {
    /// What taking the lock undid of an interrupted writer.
    pub fn recovered(&self) -> &[String] {
        &self.recovered
    }
}

impl Store {
    /// The store at `root`, created if it does not exist.
    pub fn open(root: &Path) -> Result<Self> {
        for dir in [
            root.to_owned(),
            root.join("releases"),
            root.join("channels"),
        ] {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(Self {
            root: std::path::absolute(root)?,
        })
    }

    /// Takes the store's lock (waiting for another writer), then undoes
    /// whatever an interrupted writer left half done.
    pub fn lock(&self, progress: &crate::progress::Progress) -> Result<StoreLock> {
        let path = self.root.join(".lock");
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                progress.note(&format!(
                    "another boxcar is writing to {}; waiting",
                    self.root.display()
                ));
                file.lock()
                    .with_context(|| format!("locking {}", path.display()))?;
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
        let recovered = self.recover()?;
        for line in &recovered {
            progress.note(line);
        }
        Ok(StoreLock {
            _file: file,
            recovered,
        })
    }

    pub fn releases_dir(&self) -> PathBuf {
        self.root.join("releases")
    }

    pub fn release_dir(&self, version: &str) -> PathBuf {
        self.releases_dir().join(version)
    }

    /// Where a release is assembled before it is renamed into place.
    pub fn partial_release_dir(&self, version: &str) -> PathBuf {
        self.releases_dir().join(format!(".{version}.partial"))
    }

    pub fn channel_path(&self, channel: &str) -> PathBuf {
        self.root.join("channels").join(format!("{channel}.json"))
    }

    /// The published versions (complete releases only), unsorted.
    pub fn versions(&self) -> Result<Vec<String>> {
        let mut versions = Vec::new();
        for entry in fs::read_dir(self.releases_dir())? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && entry.path().join("release.json").is_file() {
                versions.push(name);
            }
        }
        Ok(versions)
    }

    /// Reads a document and its signature; `None` if the document does not
    /// exist.
    pub fn read_signed(&self, path: &Path) -> Result<Option<(Vec<u8>, String)>> {
        if !path.exists() {
            return Ok(None);
        }
        let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let signature_path = signature_path(path);
        let signature = fs::read_to_string(&signature_path).with_context(|| {
            format!(
                "reading {} (the signature of {})",
                signature_path.display(),
                path.display()
            )
        })?;
        Ok(Some((bytes, signature)))
    }

    /// Replaces a document and its signature as a pair (see the module
    /// documentation).
    pub fn replace_signed(&self, path: &Path, bytes: &[u8], signature: &str) -> Result<()> {
        let dir = path.parent().expect("store documents live in a directory");
        let name = path
            .file_name()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        let signature_path = signature_path(path);
        let new_doc = dir.join(format!(".{name}.new"));
        let new_sig = dir.join(format!(".{name}{SIGNATURE_SUFFIX}.new"));
        write_synced(&new_doc, bytes)?;
        write_synced(&new_sig, signature.as_bytes())?;
        let old_doc = dir.join(format!(".{name}.old"));
        let old_sig = dir.join(format!(".{name}{SIGNATURE_SUFFIX}.old"));
        let journal = dir.join(format!(".{name}.journal"));
        let had_old = path.exists();
        if had_old {
            let _ = fs::remove_file(&old_doc);
            let _ = fs::remove_file(&old_sig);
            fs::hard_link(path, &old_doc)?;
            fs::hard_link(&signature_path, &old_sig)?;
        }
        write_synced(&journal, if had_old { b"replace\n" } else { b"create\n" })?;
        sync_dir(dir)?;
        fs::rename(&new_sig, &signature_path)?;
        crash_point("document-half-replaced");
        fs::rename(&new_doc, path)?;
        sync_dir(dir)?;
        fs::remove_file(&journal)?;
        let _ = fs::remove_file(&old_doc);
        let _ = fs::remove_file(&old_sig);
        sync_dir(dir)?;
        Ok(())
    }

    /// Undoes interrupted writes: puts back documents whose replacement was
    /// cut short, and removes half-assembled releases.
    pub fn recover(&self) -> Result<Vec<String>> {
        let mut undone = Vec::new();
        for dir in [self.root.clone(), self.root.join("channels")] {
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                let file = entry.file_name().to_string_lossy().into_owned();
                let Some(name) = file
                    .strip_prefix('.')
                    .and_then(|f| f.strip_suffix(".journal"))
                else {
                    continue;
                };
                let path = dir.join(name);
                let old_doc = dir.join(format!(".{name}.old"));
                let old_sig = dir.join(format!(".{name}{SIGNATURE_SUFFIX}.old"));
                if old_doc.exists() && old_sig.exists() {
                    fs::rename(&old_sig, signature_path(&path))?;
                    fs::rename(&old_doc, &path)?;
                } else {
                    // The document was being created: there was none before.
                    let _ = fs::remove_file(&path);
                    let _ = fs::remove_file(signature_path(&path));
                }
                for leftover in [
                    format!(".{name}.new"),
                    format!(".{name}{SIGNATURE_SUFFIX}.new"),
                ] {
                    let _ = fs::remove_file(dir.join(leftover));
                }
                fs::remove_file(entry.path())?;
                sync_dir(&dir)?;
                undone.push(format!(
                    "restored {} to its state before an interrupted update",
                    path.display()
                ));
            }
        }
        for entry in fs::read_dir(self.releases_dir())? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".partial") {
                fs::remove_dir_all(entry.path())?;
                undone.push(format!(
                    "removed the half-published {}",
                    entry.path().display()
                ));
            }
        }
        Ok(undone)
    }
}

/// The signature file of a document.
pub fn signature_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().expect("a file name").to_os_string();
    name.push(SIGNATURE_SUFFIX);
    path.with_file_name(name)
}

/// Writes a file and makes sure it reached the disk.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

/// Makes renames in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// For crash tests: dies here, without any cleanup, when the environment
/// variable BOXCAR_CRASH_AT names this point. Costs one environment lookup.
pub fn crash_point(name: &str) {
    if std::env::var_os("BOXCAR_CRASH_AT").is_some_and(|v| v == name) {
        eprintln!("boxcar: crashing on purpose at {name} (BOXCAR_CRASH_AT)");
        std::process::abort();
    }
}

/// Refuses a version string that would leave `releases/`.
pub fn check_version_name(version: &str) -> Result<()> {
    if version.is_empty()
        || version.starts_with('.')
        || version.contains(['/', '\\'])
        || version.contains("..")
    {
        bail!("{version:?} is not a release version");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_pair_is_replaced_whole() {
        let temp = tempfile::tempdir().unwrap();
        let store = Store::open(temp.path()).unwrap();
        let path = store.channel_path("beta");
        store.replace_signed(&path, b"one", "sig one").unwrap();
        store.replace_signed(&path, b"two", "sig two").unwrap();
        assert_eq!(
            store.read_signed(&path).unwrap().unwrap(),
            (b"two".to_vec(), "sig two".to_owned())
        );
        let leftovers: Vec<_> = fs::read_dir(temp.path().join("channels"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");
    }

    #[test]
    fn recovery_puts_back_a_half_replaced_pair() {
        let temp = tempfile::tempdir().unwrap();
        let store = Store::open(temp.path()).unwrap();
        let path = store.channel_path("beta");
        store.replace_signed(&path, b"old", "old sig").unwrap();
        // What a writer leaves when it dies between the two renames.
        let dir = temp.path().join("channels");
        fs::hard_link(&path, dir.join(".beta.json.old")).unwrap();
        fs::hard_link(signature_path(&path), dir.join(".beta.json.minisig.old")).unwrap();
        fs::write(dir.join(".beta.json.new"), "new").unwrap();
        fs::write(dir.join(".beta.json.minisig.new"), "new sig").unwrap();
        fs::rename(dir.join(".beta.json.minisig.new"), signature_path(&path)).unwrap();
        fs::write(dir.join(".beta.json.journal"), "replace\n").unwrap();
        let undone = store.recover().unwrap();
        assert_eq!(undone.len(), 1, "{undone:?}");
        assert_eq!(
            store.read_signed(&path).unwrap().unwrap(),
            (b"old".to_vec(), "old sig".to_owned())
        );
        assert!(!dir.join(".beta.json.new").exists() && !dir.join(".beta.json.journal").exists());
    }

    #[test]
    fn recovery_removes_half_published_releases() {
        let temp = tempfile::tempdir().unwrap();
        let store = Store::open(temp.path()).unwrap();
        fs::create_dir_all(store.partial_release_dir("1.0").join("x")).unwrap();
        assert_eq!(store.recover().unwrap().len(), 1);
        assert!(!store.partial_release_dir("1.0").exists());
        assert!(store.versions().unwrap().is_empty());
    }

    #[test]
    fn versions_cannot_escape() {
        for bad in ["", "..", "../x", "a/b", ".hidden"] {
            assert!(check_version_name(bad).is_err(), "{bad}");
        }
        assert!(check_version_name("1.2.3").is_ok());
    }
}
