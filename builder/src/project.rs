//! Where things are: the project checkout (recipes, overlays, channels) and
//! the cache directory that outlives every checkout.

use std::env;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// The default cache directory. Package downloads, mkosi's incremental
/// image and the tools tree are kept here, outside any checkout, so a
/// rebuild from a fresh clone reuses them.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/boxcar";

/// A Boxcar checkout.
#[derive(Clone, Debug)]
pub struct Project {
    pub root: PathBuf,
}

impl Project {
    /// Finds the checkout: `explicit` (from `--project`), else
    /// `$BOXCAR_PROJECT`, else the nearest directory at or above the
    /// current one that holds `recipes/mkosi.conf`, else the checkout this
    /// binary was built from.
    pub fn discover(explicit: Option<&Path>) -> Result<Self> {
        if let Some(dir) = explicit
            .map(Path::to_owned)
            .or_else(|| env::var_os("BOXCAR_PROJECT").map(PathBuf::from))
        {
            return Self::at(&dir);
        }
        let cwd = env::current_dir()?;
        let built_from = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_owned);
        let found = cwd
            .ancestors()
            .map(Path::to_owned)
            .chain(built_from)
            .find(|dir| Self::is_project(dir));
        match found {
            Some(root) => Ok(Self { root }),
            None => bail!(
                "no Boxcar checkout found at or above {} (looked for recipes/mkosi.conf); run from the checkout or pass --project",
                cwd.display()
            ),
        }
    }

    /// The checkout at `dir`, which must hold `recipes/mkosi.conf`.
    pub fn at(dir: &Path) -> Result<Self> {
        if !Self::is_project(dir) {
            bail!(
                "{} is not a Boxcar checkout: it has no recipes/mkosi.conf",
                dir.display()
            );
        }
        Ok(Self {
            root: std::path::absolute(dir)?,
        })
    }

    fn is_project(dir: &Path) -> bool {
        dir.join("recipes/mkosi.conf").is_file()
    }

    pub fn recipes_dir(&self) -> PathBuf {
        self.root.join("recipes")
    }

    pub fn overlays_dir(&self) -> PathBuf {
        self.root.join("overlays")
    }

    pub fn channels_dir(&self) -> PathBuf {
        self.root.join("channels")
    }
}

/// The layout of the cache directory.
#[derive(Clone, Debug)]
pub struct Cache {
    pub root: PathBuf,
}

impl Cache {
    /// `explicit` (from `--cache-dir`), else `$BOXCAR_CACHE_DIR`, else
    /// [`DEFAULT_CACHE_DIR`].
    pub fn new(explicit: Option<&Path>) -> Result<Self> {
        let root = explicit
            .map(Path::to_owned)
            .or_else(|| env::var_os("BOXCAR_CACHE_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR));
        Ok(Self {
            root: std::path::absolute(root)?,
        })
    }

    /// mkosi's incremental images (the OS right after package installation).
    pub fn mkosi_cache(&self) -> PathBuf {
        self.root.join("mkosi")
    }

    /// Downloaded .deb packages and apt metadata.
    pub fn packages(&self) -> PathBuf {
        self.root.join("packages")
    }

    /// The build scripts' directory (mkosi's `BuildDirectory=`), kept
    /// between builds: the kernel's source tree and objects, which
    /// recipes/mkosi.build.chroot reuses while its inputs stay the same.
    pub fn build_dir(&self) -> PathBuf {
        self.root.join("build")
    }

    /// mkosi's scratch space (emptied after every build).
    pub fn workspace(&self) -> PathBuf {
        self.root.join("workspace")
    }

    /// mkosi's output directory. It is stable rather than per build because
    /// mkosi keeps its tools tree (1.5 GB) there: a fresh directory would
    /// mean copying the tools tree on every build.
    pub fn mkosi_output(&self) -> PathBuf {
        self.root.join("output")
    }

    /// Held while a build uses the cache: mkosi's caches and its output
    /// directory are not safe to share between concurrent builds.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("build.lock")
    }

    /// mkosi as unpacked by `ci/setup-host`.
    pub fn mkosi_wrapper(&self) -> PathBuf {
        self.root.join("bin/mkosi")
    }
}
