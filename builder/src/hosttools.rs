//! The host programs `boxcar` needs, checked (with their versions) before
//! any work starts, so nobody waits ten minutes to learn one is missing.

use std::collections::BTreeMap;
use std::env;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::Serialize;

use crate::process::Step;

/// What every missing tool's message ends with.
pub const SETUP_HINT: &str = "run `ci/setup-host` as root (or `make setup`) to install it";

/// A program a command needs, and why.
#[derive(Clone, Debug)]
pub struct Requirement {
    /// The program's name, as looked up on PATH.
    pub program: &'static str,
    /// What it is used for, in the error message.
    pub purpose: &'static str,
    /// Lowest version known to work, as "MAJOR.MINOR"; `None` to only
    /// check that the program exists.
    pub min_version: Option<&'static str>,
    /// Arguments that make it print its version.
    pub version_args: &'static [&'static str],
    /// The Debian package that provides it.
    pub package: &'static str,
}

/// A program found on this host.
#[derive(Clone, Debug, Serialize)]
pub struct FoundTool {
    pub program: String,
    pub path: PathBuf,
    pub version: Option<String>,
}

/// The tools a command checked, by program name.
#[derive(Debug, Default)]
pub struct HostTools {
    tools: BTreeMap<String, FoundTool>,
}

impl HostTools {
    /// The path of a checked program. Panics if it was not among the
    /// requirements: that is a programming error, not a host problem.
    pub fn path(&self, program: &str) -> &Path {
        &self
            .tools
            .get(program)
            .unwrap_or_else(|| panic!("{program} was not checked before use"))
            .path
    }

    pub fn version(&self, program: &str) -> Option<&str> {
        self.tools.get(program).and_then(|t| t.version.as_deref())
    }

    pub fn all(&self) -> impl Iterator<Item = &FoundTool> {
        self.tools.values()
    }
}

/// Where to look for a program: explicit overrides first, then PATH.
pub struct Locator {
    /// Per-program candidates tried before PATH (for example mkosi unpacked
    /// under the cache directory by the setup script).
    pub preferred: BTreeMap<&'static str, Vec<PathBuf>>,
}

impl Locator {
    pub fn find(&self, program: &str) -> Option<PathBuf> {
        let preferred = self.preferred.get(program).into_iter().flatten();
        preferred
            .cloned()
            .chain(search_path(program))
            .find(|p| is_executable(p))
    }
}

fn search_path(program: &str) -> Vec<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    let mut candidates: Vec<PathBuf> = env::split_paths(&path)
        .map(|dir| dir.join(program))
        .collect();
    // Root's tools live in sbin, which a non-login shell may not have on PATH.
    for dir in ["/usr/sbin", "/sbin"] {
        candidates.push(Path::new(dir).join(program));
    }
    candidates
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Checks every requirement and reports all problems at once.
pub fn check(requirements: &[Requirement], locator: &Locator, command: &str) -> Result<HostTools> {
    let mut tools = HostTools::default();
    let mut problems = Vec::new();
    for requirement in requirements {
        match check_one(requirement, locator) {
            Ok(found) => {
                tools.tools.insert(requirement.program.to_owned(), found);
            }
            Err(problem) => problems.push(problem),
        }
    }
    if !problems.is_empty() {
        bail!(
            "this host cannot run `boxcar {command}` yet:\n{}\n{}",
            problems
                .iter()
                .map(|p| format!("  - {p}"))
                .collect::<Vec<_>>()
                .join("\n"),
            SETUP_HINT
        );
    }
    Ok(tools)
}

fn check_one(requirement: &Requirement, locator: &Locator) -> Result<FoundTool, String> {
    let Some(path) = locator.find(requirement.program) else {
        return Err(format!(
            "{} is not installed; it {} (Debian package {})",
            requirement.program, requirement.purpose, requirement.package
        ));
    };
    let mut found = FoundTool {
        program: requirement.program.to_owned(),
        path,
        version: None,
    };
    let Some(minimum) = requirement.min_version else {
        return Ok(found);
    };
    let output = Step::new(
        format!("asking {} for its version", requirement.program),
        &found.path,
    )
    .args(requirement.version_args)
    .output_text()
    .map_err(|e| format!("{e}"))?;
    let version = parse_version(&output).ok_or_else(|| {
        format!(
            "{} printed no version we could read: {:?}",
            found.path.display(),
            output.lines().next().unwrap_or_default()
        )
    })?;
    if compare_versions(&version, minimum).is_lt() {
        return Err(format!(
            "{} {version} is too old; {} {minimum} or newer is needed because it {}",
            found.path.display(),
            requirement.program,
            requirement.purpose
        ));
    }
    found.version = Some(version);
    Ok(found)
}

/// The first dotted number (`25.3`, `2.6.1`) in a program's version output.
pub fn parse_version(output: &str) -> Option<String> {
    output
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .find_map(|word| {
            let word = word.trim_matches('.');
            let parts: Vec<&str> = word.split('.').collect();
            (parts.len() >= 2 && parts.iter().all(|p| !p.is_empty())).then(|| word.to_owned())
        })
}

/// Compares dotted numeric versions component by component.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let numbers = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    let (a, b) = (numbers(a), numbers(b));
    let len = a.len().max(b.len());
    let pad =
        |v: &[u64]| -> Vec<u64> { (0..len).map(|i| v.get(i).copied().unwrap_or(0)).collect() };
    pad(&a).cmp(&pad(&b))
}

/// Whether an ELF executable is statically linked (has no PT_INTERP
/// program header), read from its headers. A test container must run with
/// no libraries around it.
pub fn is_static_elf(path: &Path) -> Result<bool> {
    let data = std::fs::read(path)?;
    let field = |offset: usize, size: usize| -> Option<u64> {
        let bytes = data.get(offset..offset + size)?;
        Some(
            bytes
                .iter()
                .rev()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
        )
    };
    if data.get(..4) != Some(b"\x7fELF".as_slice())
        || data.get(4) != Some(&2)
        || data.get(5) != Some(&1)
    {
        bail!(
            "{} is not a 64-bit little-endian ELF executable",
            path.display()
        );
    }
    const PT_INTERP: u64 = 3;
    let (Some(phoff), Some(phentsize), Some(phnum)) =
        (field(0x20, 8), field(0x36, 2), field(0x38, 2))
    else {
        bail!("{} has a truncated ELF header", path.display());
    };
    for index in 0..phnum {
        let entry = usize::try_from(phoff + index * phentsize)?;
        if field(entry, 4) == Some(PT_INTERP) {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_versions_from_real_tool_output() {
        assert_eq!(parse_version("mkosi 25.3").as_deref(), Some("25.3"));
        assert_eq!(
            parse_version("veritysetup 2.6.1 flags: UDEV BLKID").as_deref(),
            Some("2.6.1")
        );
        assert_eq!(
            parse_version("sfdisk from util-linux 2.38.1").as_deref(),
            Some("2.38.1")
        );
        assert_eq!(
            parse_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)")
                .as_deref(),
            Some("10.0.2")
        );
        assert_eq!(parse_version("no version here 7"), None);
    }

    #[test]
    fn compares_numerically() {
        use std::cmp::Ordering::*;
        assert_eq!(compare_versions("25.3", "25"), Greater);
        assert_eq!(compare_versions("9.2", "25"), Less);
        assert_eq!(compare_versions("2.6.1", "2.6.1"), Equal);
        assert_eq!(compare_versions("10.0", "7.2"), Greater);
    }

    #[test]
    fn missing_and_old_tools_are_all_reported_with_the_setup_hint() {
        let locator = Locator {
            preferred: BTreeMap::from([("sh", vec![PathBuf::from("/bin/sh")])]),
        };
        let requirements = [
            Requirement {
                program: "boxcar-missing-tool",
                purpose: "does something",
                min_version: None,
                version_args: &[],
                package: "boxcar-missing",
            },
            Requirement {
                program: "sh",
                purpose: "runs scripts",
                min_version: Some("999.0"),
                version_args: &["-c", "echo sh 1.0"],
                package: "dash",
            },
        ];
        let message = check(&requirements, &locator, "build")
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("boxcar-missing-tool is not installed"),
            "{message}"
        );
        assert!(
            message.contains("1.0 is too old; sh 999.0 or newer"),
            "{message}"
        );
        assert!(message.contains("ci/setup-host"), "{message}");
    }

    #[test]
    fn found_tool_reports_path_and_version() {
        let locator = Locator {
            preferred: BTreeMap::new(),
        };
        let requirements = [Requirement {
            program: "sh",
            purpose: "runs scripts",
            min_version: Some("1.0"),
            version_args: &["-c", "echo sh 5.2"],
            package: "dash",
        }];
        let tools = check(&requirements, &locator, "build").unwrap();
        assert_eq!(tools.version("sh"), Some("5.2"));
    }

    #[test]
    fn tells_static_from_dynamic_executables() {
        assert!(!is_static_elf(Path::new("/bin/sh")).unwrap());
        assert!(is_static_elf(Path::new("/etc/hostname")).is_err());
    }
}
