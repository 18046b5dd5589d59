//! A store kept in a directory, served as static files.
//!
//! Writers take turns through a lock file (`.lock`). A release is assembled
//! in `releases/.<version>.partial` and renamed into place whole. A
//! document and its signature are two files, replaced as a pair through a
//! journal that says whether the pair is replaced or created: if a writer
//! dies between the two renames, the next writer puts the old pair back
//! (or removes the half-created one), so the store is as it was before the
//! interrupted operation. Every file is created new (never through a symlink left in
//! its place) and synced before it is renamed.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use boxcar_client::layout::{self, pending, SafeName};
use boxcar_client::transport::DirTransport;
use boxcar_client::{files, Transport};
use boxcar_signing::{DigestingReader, Sha256Digest};

use super::{crash_point, Conflict, Expect, ReleaseDraft, StoreBackend, WriterLock};
use crate::sparse::{open_source, HoleFilledReader};

/// A store directory this process may write to.
#[derive(Clone, Debug)]
pub struct DirBackend {
    root: PathBuf,
}

impl DirBackend {
    /// The store at `root`, created if it does not exist.
    pub fn open(root: &Path) -> Result<Self> {
        for dir in [
            root.to_owned(),
            root.join(layout::RELEASES_DIR),
            root.join(layout::CHANNELS_DIR),
        ] {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(Self {
            root: std::path::absolute(root)?,
        })
    }

    /// The file of a store path.
    fn file(&self, path: &str) -> Result<PathBuf> {
        layout::check_path(path)?;
        Ok(self.root.join(path))
    }

    fn releases_dir(&self) -> PathBuf {
        self.root.join(layout::RELEASES_DIR)
    }

    /// Undoes the interrupted replacement (or creation) of the pair `name`
    /// in `dir` that its journal records, so the store is as it was before.
    fn undo_journal(&self, dir: &Path, name: &str) -> Result<String> {
        let journal = dir.join(pending::journal_name(name));
        let path = dir.join(name);
        let signature_name = layout::signature_of(name);
        let done = if journal_says_create(&journal)? {
            // There was no document before: none is left.
            remove_if_there(&path)?;
            remove_if_there(&dir.join(&signature_name))?;
            format!("removed the half-created {}", path.display())
        } else {
            // A replacement: the .old links hold the pair from before. An
            // undo killed half way has put one back already.
            restore_old(dir, &signature_name)?;
            restore_old(dir, name)?;
            format!(
                "restored {} to its state before an interrupted update",
                path.display()
            )
        };
        for leftover in [pending::new_name(name), pending::new_name(&signature_name)] {
            remove_if_there(&dir.join(leftover))?;
        }
        fs::remove_file(&journal).with_context(|| format!("removing {}", journal.display()))?;
        sync_dir(dir)?;
        Ok(done)
    }
}

/// Whether the journal at `path` records the creation of its document,
/// which an undo removes. Anything else undoes as a replacement, which only
/// puts back what is kept: a journal left empty by a writer that died
/// writing it (before it renamed anything), or a symlink planted as a
/// journal (never followed; a writer creates its journal as a file).
fn journal_says_create(path: &Path) -> Result<bool> {
    let metadata =
        fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    // A writer's journal is "create\n" or "replace\n".
    if !metadata.is_file() || metadata.len() > 64 {
        return Ok(false);
    }
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.trim() == "create")
}

/// Puts `dir/.NAME.old` back as `dir/NAME` if it is still there (an undo
/// killed half way may have put it back already).
fn restore_old(dir: &Path, name: &str) -> Result<()> {
    let old = dir.join(pending::old_name(name));
    let path = dir.join(name);
    match fs::rename(&old, &path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other.with_context(|| format!("renaming {} to {}", old.display(), path.display())),
    }
}

impl StoreBackend for DirBackend {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn reader(&self) -> Box<dyn Transport> {
        Box::new(DirTransport::new(&self.root))
    }

    fn lock(&self, waiting: &dyn Fn(&str)) -> Result<WriterLock> {
        let path = self.root.join(layout::WRITER_LOCK);
        let file = files::open_regular(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                waiting(&format!(
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
        let repaired = self.repair()?;
        Ok(WriterLock::new(Box::new(file), repaired))
    }

    fn repair(&self) -> Result<Vec<String>> {
        let mut repaired = Vec::new();
        for dir in [
            self.root.clone(),
            self.root.join(layout::CHANNELS_DIR),
            self.root.join(layout::KEYRINGS_DIR),
        ] {
            if !dir.is_dir() {
                continue;
            }
            for entry in fs::read_dir(&dir)? {
                let file = entry?.file_name().to_string_lossy().into_owned();
                if let Some(name) = pending::journal_subject(&file) {
                    repaired.push(self.undo_journal(&dir, name)?);
                }
            }
        }
        for entry in fs::read_dir(self.releases_dir())? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".partial") {
                fs::remove_dir_all(entry.path())?;
                repaired.push(format!(
                    "removed the half-published {}",
                    entry.path().display()
                ));
            }
        }
        Ok(repaired)
    }

    fn release_exists(&self, version: &SafeName) -> Result<bool> {
        Ok(fs::symlink_metadata(self.file(&layout::release_dir(version))?).is_ok())
    }

    fn begin_release<'a>(&'a self, version: &SafeName) -> Result<Box<dyn ReleaseDraft + 'a>> {
        let final_dir = self.file(&layout::release_dir(version))?;
        if self.release_exists(version)? {
            bail!(
                "version {version} is already published at {}; a published version is never replaced",
                final_dir.display()
            );
        }
        let partial = self
            .releases_dir()
            .join(pending::partial_release_name(version.as_str()));
        if fs::symlink_metadata(&partial).is_ok() {
            fs::remove_dir_all(&partial)
                .with_context(|| format!("removing {}", partial.display()))?;
        }
        fs::create_dir(&partial).with_context(|| format!("creating {}", partial.display()))?;
        Ok(Box::new(DirDraft {
            releases: self.releases_dir(),
            partial,
            final_dir,
        }))
    }

    fn replace_document(
        &self,
        path: &str,
        bytes: &[u8],
        signature: &str,
        expect: &Expect,
    ) -> Result<()> {
        let path = self.file(path)?;
        check_expected(&path, expect)?;
        let dir = path.parent().expect("store documents live in a directory");
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let name = path
            .file_name()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        let signature_name = layout::signature_of(&name);
        let signature_path = dir.join(&signature_name);
        let new_doc = dir.join(pending::new_name(&name));
        let new_sig = dir.join(pending::new_name(&signature_name));
        write_new(&new_doc, bytes)?;
        write_new(&new_sig, signature.as_bytes())?;
        let old_doc = dir.join(pending::old_name(&name));
        let old_sig = dir.join(pending::old_name(&signature_name));
        let journal = dir.join(pending::journal_name(&name));
        let had_old = fs::symlink_metadata(&path).is_ok();
        if had_old {
            remove_if_there(&old_doc)?;
            remove_if_there(&old_sig)?;
            fs::hard_link(&path, &old_doc)?;
            fs::hard_link(&signature_path, &old_sig)?;
        }
        write_new(&journal, if had_old { b"replace\n" } else { b"create\n" })?;
        sync_dir(dir)?;
        fs::rename(&new_sig, &signature_path)?;
        crash_point("document-half-replaced");
        fs::rename(&new_doc, &path)?;
        sync_dir(dir)?;
        fs::remove_file(&journal)?;
        remove_if_there(&old_doc)?;
        remove_if_there(&old_sig)?;
        sync_dir(dir)?;
        Ok(())
    }

    fn replace_signature(&self, path: &str, signature: &str) -> Result<()> {
        let path = self.file(&layout::signature_of(path))?;
        let dir = path.parent().expect("store files live in a directory");
        let name = path.file_name().expect("a file name").to_string_lossy();
        let new = dir.join(pending::new_name(&name));
        write_new(&new, signature.as_bytes())?;
        fs::rename(&new, &path)
            .with_context(|| format!("renaming {} to {}", new.display(), path.display()))?;
        sync_dir(dir)
    }

    fn list_releases(&self) -> Result<Vec<SafeName>> {
        let mut versions = Vec::new();
        for entry in fs::read_dir(self.releases_dir())? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && entry.path().join(layout::RELEASE_DOCUMENT).is_file() {
                versions.push(SafeName::new("version", &name)?);
            }
        }
        Ok(versions)
    }

    fn list_channels(&self) -> Result<Vec<SafeName>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(self.root.join(layout::CHANNELS_DIR))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(channel) = name.strip_suffix(".json") {
                if !channel.starts_with('.') {
                    names.push(SafeName::new("channel", channel)?);
                }
            }
        }
        names.sort();
        Ok(names)
    }
}

/// A release assembled in `releases/.<version>.partial`.
struct DirDraft {
    releases: PathBuf,
    partial: PathBuf,
    final_dir: PathBuf,
}

impl DirDraft {
    /// The file for `name` inside the draft, its directories created.
    fn target(&self, name: &str) -> Result<PathBuf> {
        let mut target = self.partial.clone();
        for part in name.split('/') {
            target.push(SafeName::new("file name", part)?.as_str());
        }
        if let Some(dir) = target.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(target)
    }
}

impl ReleaseDraft for DirDraft {
    fn copy_in(
        &mut self,
        name: &str,
        source: &Path,
        copied: &dyn Fn(u64),
    ) -> Result<(Sha256Digest, u64)> {
        let target = self.target(name)?;
        copy_sparse(source, &target, copied)
            .with_context(|| format!("copying {} to {}", source.display(), target.display()))
    }

    fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.target(name)?;
        let mut file = files::create_new(&path, 0o644)?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", path.display()))
    }

    fn commit(self: Box<Self>) -> Result<()> {
        sync_dir(&self.partial)?;
        crash_point("publish-before-rename");
        fs::rename(&self.partial, &self.final_dir).with_context(|| {
            format!(
                "renaming {} to {}",
                self.partial.display(),
                self.final_dir.display()
            )
        })?;
        sync_dir(&self.releases)
    }
}

/// Copies `from` to the new file `to`, keeping holes as holes, and returns
/// the digest and size of what was copied, computed in the same pass.
fn copy_sparse(from: &Path, to: &Path, copied: &dyn Fn(u64)) -> Result<(Sha256Digest, u64)> {
    let (source, length) = open_source(from)?;
    let mut reader = DigestingReader::new(HoleFilledReader::new(source, length));
    let mut target = files::create_new(to, 0o644)?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut position = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        let chunk = &buffer[..n];
        if chunk.iter().all(|&b| b == 0) {
            // Leave a hole rather than writing zeros.
            target.seek(SeekFrom::Current(n as i64))?;
        } else {
            target.write_all(chunk)?;
        }
        position += n as u64;
        copied(position);
    }
    target.set_len(position)?;
    target.sync_all()?;
    Ok(reader.finish())
}

/// Checks, under the writers' lock, that the document at `path` is what
/// the writer built on: only a hand edit can make it differ, and a writer
/// does not replace what it has not read.
fn check_expected(path: &Path, expect: &Expect) -> Result<()> {
    let current = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        _ => Some(boxcar_signing::sha256_reader(open_source(path)?.0)?.0),
    };
    let holds = match (expect, current) {
        (Expect::Anything, _) | (Expect::Absent, None) => true,
        (Expect::Sha256(expected), Some(found)) => *expected == found,
        _ => false,
    };
    if !holds {
        return Err(Conflict::new(path.display().to_string()).into());
    }
    Ok(())
}

/// Creates `path` new (a stale one from a crashed writer is removed
/// first; a symlink is removed, never followed), writes and syncs it.
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    remove_if_there(path)?;
    let mut file = files::create_new(path, 0o644)?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

fn remove_if_there(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Makes renames in `dir` durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn read_pair(store: &DirBackend, path: &str) -> (Vec<u8>, Vec<u8>) {
        (
            fs::read(store.root.join(path)).unwrap(),
            fs::read(store.root.join(layout::signature_of(path))).unwrap(),
        )
    }

    #[test]
    fn a_document_pair_is_replaced_whole() {
        let temp = tempfile::tempdir().unwrap();
        let store = DirBackend::open(temp.path()).unwrap();
        store
            .replace_document("channels/beta.json", b"one", "sig one", &Expect::Absent)
            .unwrap();
        store
            .replace_document("channels/beta.json", b"two", "sig two", &Expect::Anything)
            .unwrap();
        assert_eq!(
            read_pair(&store, "channels/beta.json"),
            (b"two".to_vec(), b"sig two".to_vec())
        );
        let leftovers: Vec<_> = fs::read_dir(temp.path().join("channels"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");
    }

    #[test]
    fn repair_puts_back_a_half_replaced_pair() {
        let temp = tempfile::tempdir().unwrap();
        let store = DirBackend::open(temp.path()).unwrap();
        store
            .replace_document("channels/beta.json", b"old", "old sig", &Expect::Absent)
            .unwrap();
        // What a writer leaves when it dies between the two renames.
        let dir = temp.path().join("channels");
        let path = dir.join("beta.json");
        fs::hard_link(&path, dir.join(".beta.json.old")).unwrap();
        fs::hard_link(
            dir.join("beta.json.minisig"),
            dir.join(".beta.json.minisig.old"),
        )
        .unwrap();
        fs::write(dir.join(".beta.json.new"), "new").unwrap();
        fs::write(dir.join(".beta.json.minisig.new"), "new sig").unwrap();
        fs::rename(
            dir.join(".beta.json.minisig.new"),
            dir.join("beta.json.minisig"),
        )
        .unwrap();
        fs::write(dir.join(".beta.json.journal"), "replace\n").unwrap();
        let repaired = store.repair().unwrap();
        assert_eq!(repaired.len(), 1, "{repaired:?}");
        assert_eq!(
            read_pair(&store, "channels/beta.json"),
            (b"old".to_vec(), b"old sig".to_vec())
        );
        assert!(!dir.join(".beta.json.new").exists() && !dir.join(".beta.json.journal").exists());
    }

    #[test]
    fn a_repair_killed_between_its_two_renames_is_finished_by_the_next() {
        let temp = tempfile::tempdir().unwrap();
        let store = DirBackend::open(temp.path()).unwrap();
        store
            .replace_document("keys.json", b"old", "old sig", &Expect::Absent)
            .unwrap();
        // A replacement interrupted after both renames, whose repair was
        // then killed after putting the old signature back.
        let root = temp.path();
        fs::hard_link(root.join("keys.json"), root.join(".keys.json.old")).unwrap();
        fs::write(root.join(".keys.json.journal"), "replace\n").unwrap();
        fs::remove_file(root.join("keys.json")).unwrap();
        fs::write(root.join("keys.json"), "new").unwrap();
        let repaired = store.repair().unwrap();
        assert_eq!(repaired.len(), 1, "{repaired:?}");
        assert!(repaired[0].starts_with("restored"), "{repaired:?}");
        assert_eq!(
            read_pair(&store, "keys.json"),
            (b"old".to_vec(), b"old sig".to_vec())
        );
        assert!(!root.join(".keys.json.old").exists() && !root.join(".keys.json.journal").exists());
    }

    #[test]
    fn repair_removes_a_half_created_pair() {
        let temp = tempfile::tempdir().unwrap();
        let store = DirBackend::open(temp.path()).unwrap();
        // A first channel document whose signature was renamed into place
        // before the writer died.
        let dir = temp.path().join("channels");
        fs::write(dir.join("beta.json.minisig"), "new sig").unwrap();
        fs::write(dir.join(".beta.json.new"), "new").unwrap();
        fs::write(dir.join(".beta.json.journal"), "create\n").unwrap();
        let repaired = store.repair().unwrap();
        assert!(
            repaired[0].starts_with("removed the half-created"),
            "{repaired:?}"
        );
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn repair_removes_half_published_releases() {
        let temp = tempfile::tempdir().unwrap();
        let store = DirBackend::open(temp.path()).unwrap();
        let version = SafeName::new("version", "1.0").unwrap();
        let mut draft = store.begin_release(&version).unwrap();
        draft.write("evidence/qemu.json", b"{}").unwrap();
        drop(draft);
        assert_eq!(store.repair().unwrap().len(), 1);
        assert!(!temp.path().join("releases/.1.0.partial").exists());
        assert!(store.list_releases().unwrap().is_empty());
    }

    #[test]
    fn a_committed_release_is_listed_and_never_replaced() {
        let temp = tempfile::tempdir().unwrap();
        let store = DirBackend::open(temp.path()).unwrap();
        let version = SafeName::new("version", "1.0").unwrap();
        let mut draft = store.begin_release(&version).unwrap();
        draft.write(layout::RELEASE_DOCUMENT, b"{}").unwrap();
        assert!(draft.write(layout::RELEASE_DOCUMENT, b"{}").is_err());
        assert!(draft.write("../escape", b"x").is_err());
        draft.commit().unwrap();
        assert_eq!(
            store.list_releases().unwrap(),
            std::slice::from_ref(&version)
        );
        let err = store.begin_release(&version).err().unwrap();
        assert!(err.to_string().contains("never replaced"), "{err}");
    }

    #[test]
    fn copies_sparse_files_keeping_holes_and_hashing_all_bytes() {
        let temp = tempfile::tempdir().unwrap();
        let from = temp.path().join("disk.raw");
        let file = File::create(&from).unwrap();
        file.write_all_at(b"head", 0).unwrap();
        file.write_all_at(b"tail", 20 * 1024 * 1024).unwrap();
        drop(file);
        let to = temp.path().join("copy.raw");
        let (digest, size) = copy_sparse(&from, &to, &|_| {}).unwrap();
        assert_eq!(fs::read(&from).unwrap(), fs::read(&to).unwrap());
        assert_eq!((digest, size), boxcar_signing::sha256_file(&from).unwrap());
        use std::os::unix::fs::MetadataExt;
        assert!(
            fs::metadata(&to).unwrap().blocks() * 512 < 4 * 1024 * 1024,
            "holes were written out"
        );
    }

    #[test]
    fn the_lock_file_is_never_a_symlink_to_somewhere_else() {
        let temp = tempfile::tempdir().unwrap();
        let store = DirBackend::open(temp.path()).unwrap();
        let victim = temp.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, temp.path().join(".lock")).unwrap();
        assert!(store.lock(&|_| {}).is_err());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
    }
}
