//! Creating local files safely. A file is created new (never opened
//! through a symlink someone left in its place), written, synced, and
//! renamed over its final name, so a crash leaves the old file or the new
//! one, never half of one.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// Creates `path`, which must not exist (not even as a dangling symlink).
pub fn create_new(path: &Path, mode: u32) -> Result<File, Error> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Error::local(format!("creating {}", path.display()), e))
}

/// Opens `path` for reading and appending, creating it if it does not
/// exist; refuses a symlink or anything but a regular file.
pub fn open_regular(path: &Path) -> Result<File, Error> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| open_error(path, e))?;
    ensure_regular(path, &file)?;
    Ok(file)
}

/// The whole of the regular file at `path`, or None if there is none;
/// refuses a symlink, anything but a regular file, and a file of more than
/// `cap` bytes (a local file can be as hostile as a download).
pub fn read_regular(path: &Path, cap: u64) -> Result<Option<Vec<u8>>, Error> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(open_error(path, e)),
    };
    ensure_regular(path, &file)?;
    let mut bytes = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::local(format!("reading {}", path.display()), e))?;
    if bytes.len() as u64 > cap {
        return Err(Error::local(
            format!("reading {}", path.display()),
            std::io::Error::other(format!("it is over {cap} bytes")),
        ));
    }
    Ok(Some(bytes))
}

/// An error opening `path` that says so when it was a symlink.
fn open_error(path: &Path, e: std::io::Error) -> Error {
    let what = if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
        format!(
            "opening {}: it is a symlink, which is never followed",
            path.display()
        )
    } else {
        format!("opening {}", path.display())
    };
    Error::local(what, e)
}

fn ensure_regular(path: &Path, file: &File) -> Result<(), Error> {
    let meta = file
        .metadata()
        .map_err(|e| Error::local(format!("reading {}", path.display()), e))?;
    if !meta.is_file() {
        return Err(Error::local(
            format!("opening {}", path.display()),
            std::io::Error::other("not a regular file"),
        ));
    }
    Ok(())
}

/// Replaces the file at `path` with `bytes` (mode 0644): written to a new
/// temporary file beside it, synced, then renamed into place.
pub fn replace(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let temp = temporary_name(path);
    let result = (|| {
        let mut file = create_new(&temp, 0o644)?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::local(format!("writing {}", temp.display()), e))?;
        fs::rename(&temp, path).map_err(|e| {
            Error::local(
                format!("renaming {} to {}", temp.display(), path.display()),
                e,
            )
        })
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Whose free space to count: a file system keeps some blocks back that
/// only root may write (5 % on ext4 by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpaceFor {
    /// Root, as the node agent runs: the reserved blocks count.
    Root,
    /// Any user: the reserved blocks do not count.
    AnyUser,
}

/// Bytes that may still be written on the file system holding `path`.
pub fn free_bytes(path: &Path, space_for: SpaceFor) -> Result<u64, Error> {
    let stat = rustix::fs::statvfs(path)
        .map_err(|e| Error::local(format!("statvfs {}", path.display()), e.into()))?;
    let blocks = match space_for {
        SpaceFor::Root => stat.f_bfree,
        SpaceFor::AnyUser => stat.f_bavail,
    };
    Ok(blocks.saturating_mul(stat.f_frsize))
}

/// A name beside `path` that no one else uses: hidden, with this process's
/// id.
fn temporary_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_may_write_at_least_what_any_user_may() {
        let temp = tempfile::tempdir().unwrap();
        let root = free_bytes(temp.path(), SpaceFor::Root).unwrap();
        let anyone = free_bytes(temp.path(), SpaceFor::AnyUser).unwrap();
        assert!(root >= anyone && anyone > 0, "root {root}, anyone {anyone}");
        let missing = free_bytes(&temp.path().join("missing"), SpaceFor::Root).unwrap_err();
        assert!(missing.to_string().contains("statvfs"), "{missing}");
    }

    #[test]
    fn replace_never_writes_through_a_symlink() {
        let temp = tempfile::tempdir().unwrap();
        let victim = temp.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        let path = temp.path().join("state.json");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        replace(&path, b"new").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        assert!(!fs::symlink_metadata(&path).unwrap().is_symlink());
    }

    #[test]
    fn open_regular_refuses_symlinks_and_create_new_refuses_anything_there() {
        let temp = tempfile::tempdir().unwrap();
        let victim = temp.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        let link = temp.path().join("a.part");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let err = open_regular(&link).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(create_new(&link, 0o600).is_err());
        let dangling = temp.path().join("b.part");
        std::os::unix::fs::symlink(temp.path().join("nowhere"), &dangling).unwrap();
        assert!(create_new(&dangling, 0o600).is_err());
        assert!(!temp.path().join("nowhere").exists());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
    }

    #[test]
    fn read_regular_reads_within_the_cap_and_refuses_the_rest() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("state.json");
        assert_eq!(read_regular(&path, 4).unwrap(), None);
        fs::write(&path, "1234").unwrap();
        assert_eq!(read_regular(&path, 4).unwrap().unwrap(), b"1234");
        fs::write(&path, "12345").unwrap();
        let err = format!("{:#}", read_regular(&path, 4).unwrap_err());
        assert!(err.contains("over 4 bytes"), "{err}");

        let link = temp.path().join("link.json");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let err = read_regular(&link, 100).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
        let err = format!("{:#}", read_regular(temp.path(), 100).unwrap_err());
        assert!(err.contains("not a regular file"), "{err}");
    }
}
