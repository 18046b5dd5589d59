//! mkosi recipes under `recipes/`: finding their files and checking them
//! before a build starts.
//!
//! mkosi and systemd-repart would reject most mistakes too, but only after
//! minutes of package installation, and not always with the file and line.
//! This check runs in milliseconds and names both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::config_error::ConfigError;

/// Settings mkosi 25 accepts, by section (from mkosi(1)).
const MKOSI_SETTINGS: &[(&str, &[&str])] = &[
    (
        "Match",
        &[
            "Profiles",
            "Distribution",
            "Release",
            "Architecture",
            "Repositories",
            "PathExists",
            "ImageId",
            "ImageVersion",
            "Bootable",
            "Format",
            "SystemdVersion",
            "BuildSources",
            "HostArchitecture",
            "ToolsTreeDistribution",
            "ToolsTreeRelease",
            "Environment",
        ],
    ),
    ("Include", &["Include"]),
    (
        "Config",
        &[
            "Profiles",
            "Dependencies",
            "MinimumVersion",
            "ConfigureScripts",
            "PassEnvironment",
        ],
    ),
    (
        "Distribution",
        &[
            "Distribution",
            "Release",
            "Architecture",
            "Mirror",
            "LocalMirror",
            "RepositoryKeyCheck",
            "RepositoryKeyFetch",
            "Repositories",
        ],
    ),
    (
        "Output",
        &[
            "Format",
            "ManifestFormat",
            "Output",
            "CompressOutput",
            "CompressLevel",
            "OutputDirectory",
            "OutputMode",
            "ImageVersion",
            "ImageId",
            "SplitArtifacts",
            "RepartDirectories",
            "SectorSize",
            "Overlay",
            "Seed",
            "CleanScripts",
        ],
    ),
    (
        "Content",
        &[
            "Packages",
            "BuildPackages",
            "VolatilePackages",
            "PackageDirectories",
            "VolatilePackageDirectories",
            "WithRecommends",
            "WithDocs",
            "BaseTrees",
            "SkeletonTrees",
            "ExtraTrees",
            "RemovePackages",
            "RemoveFiles",
            "CleanPackageMetadata",
            "SourceDateEpoch",
            "SyncScripts",
            "PrepareScripts",
            "BuildScripts",
            "PostInstallationScripts",
            "FinalizeScripts",
            "PostOutputScripts",
            "Bootable",
            "Bootloader",
            "BiosBootloader",
            "ShimBootloader",
            "UnifiedKernelImages",
            "UnifiedKernelImageFormat",
            "UnifiedKernelImageProfiles",
            "Initrds",
            "InitrdPackages",
            "InitrdVolatilePackages",
            "Devicetree",
            "MicrocodeHost",
            "KernelCommandLine",
            "KernelModulesInclude",
            "KernelModulesExclude",
            "KernelModulesInitrd",
            "KernelModulesInitrdInclude",
            "KernelModulesInitrdExclude",
            "Locale",
            "LocaleMessages",
            "Keymap",
            "Timezone",
            "Hostname",
            "RootShell",
            "RootPassword",
            "Autologin",
            "MakeInitrd",
            "Ssh",
            "SELinuxRelabel",
            "MachineId",
        ],
    ),
    (
        "Validation",
        &[
            "SecureBoot",
            "SecureBootAutoEnroll",
            "SecureBootKey",
            "SecureBootCertificate",
            "SecureBootSignTool",
            "Verity",
            "VerityKey",
            "VerityCertificate",
            "SignExpectedPcr",
            "SignExpectedPcrKey",
            "SignExpectedPcrCertificate",
            "SecureBootKeySource",
            "VerityKeySource",
            "SignExpectedPcrKeySource",
            "SecureBootCertificateSource",
            "VerityCertificateSource",
            "SignExpectedPcrCertificateSource",
            "Passphrase",
            "Checksum",
            "Sign",
            "OpenPGPTool",
            "Key",
        ],
    ),
    (
        "Build",
        &[
            "ToolsTree",
            "ToolsTreeDistribution",
            "ToolsTreeRelease",
            "ToolsTreeMirror",
            "ToolsTreeRepositories",
            "ToolsTreeSandboxTrees",
            "ToolsTreePackages",
            "ToolsTreePackageDirectories",
            "ToolsTreeCertificates",
            "ExtraSearchPaths",
            "Incremental",
            "CacheOnly",
            "SandboxTrees",
            "WorkspaceDirectory",
            "CacheDirectory",
            "PackageCacheDirectory",
            "BuildDirectory",
            "UseSubvolumes",
            "RepartOffline",
            "History",
            "BuildSources",
            "BuildSourcesEphemeral",
            "Environment",
            "EnvironmentFiles",
            "WithTests",
            "WithNetwork",
            "ProxyUrl",
            "ProxyExclude",
            "ProxyPeerCertificate",
            "ProxyClientCertificate",
            "ProxyClientKey",
        ],
    ),
    (
        "Runtime",
        &[
            "NSpawnSettings",
            "VirtualMachineMonitor",
            "Console",
            "CPUs",
            "RAM",
            "KVM",
            "Vsock",
            "VsockConnectionId",
            "TPM",
            "CDROM",
            "Removable",
            "Firmware",
            "FirmwareVariables",
            "Linux",
            "Drives",
            "QemuArgs",
            "Ephemeral",
            "Credentials",
            "KernelCommandLineExtra",
            "RuntimeTrees",
            "RuntimeSize",
            "RuntimeScratch",
            "RuntimeNetwork",
            "RuntimeBuildSources",
            "RuntimeHome",
            "UnitProperties",
            "SshKey",
            "SshCertificate",
            "Machine",
            "Register",
            "ForwardJournal",
            "SysupdateDirectory",
        ],
    ),
    ("UKIProfile", &["Profile", "Cmdline"]),
];

/// Settings of a systemd-repart `[Partition]` section (repart.d(5), v257).
const REPART_SETTINGS: &[&str] = &[
    "Type",
    "Label",
    "UUID",
    "Priority",
    "Weight",
    "PaddingWeight",
    "SizeMinBytes",
    "SizeMaxBytes",
    "PaddingMinBytes",
    "PaddingMaxBytes",
    "CopyBlocks",
    "Format",
    "CopyFiles",
    "ExcludeFiles",
    "ExcludeFilesTarget",
    "MakeDirectories",
    "MakeSymlinks",
    "Subvolumes",
    "DefaultSubvolume",
    "Encrypt",
    "EncryptedVolume",
    "Verity",
    "VerityMatchKey",
    "VerityDataBlockSizeBytes",
    "VerityHashBlockSizeBytes",
    "FactoryReset",
    "Flags",
    "ReadOnly",
    "NoAuto",
    "GrowFileSystem",
    "SplitName",
    "Minimize",
    "MountPoint",
    "Compression",
    "CompressionLevel",
    "SupplementFor",
];

/// Partition type identifiers repart understands (the Discoverable
/// Partitions names, with and without an architecture suffix).
const REPART_TYPES: &[&str] = &[
    "esp",
    "xbootldr",
    "swap",
    "home",
    "srv",
    "var",
    "tmp",
    "linux-generic",
    "root",
    "root-verity",
    "root-verity-sig",
    "usr",
    "usr-verity",
    "usr-verity-sig",
    "root-x86-64",
    "root-x86-64-verity",
    "root-x86-64-verity-sig",
    "usr-x86-64",
    "usr-x86-64-verity",
    "usr-x86-64-verity-sig",
    "root-arm64",
    "usr-arm64",
    "root-arm64-verity",
    "usr-arm64-verity",
];

/// The split artifacts the pipeline reads after mkosi: `/usr`, its
/// verity tree and its root hash signature partition, named by
/// `SplitName=` in the repart definitions.
pub const USR_SPLIT_NAME: &str = "usr";
pub const USR_VERITY_SPLIT_NAME: &str = "usr-verity";
pub const USR_SIGNATURE_SPLIT_NAME: &str = "usr-verity-sig";

/// Where slot A's signature partition is defined, under the recipe: one
/// directory for builds that sign /usr and one for builds that do not
/// (systemd-repart refuses `Verity=signature` without a key). A build adds
/// one of them to mkosi's repart directories.
pub const USR_SIGNATURE_DIR: &str = "usr-signature";

/// How a file's syntax differs between mkosi and systemd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialect {
    /// mkosi: `#` starts a comment anywhere; indented lines continue a value.
    Mkosi,
    /// systemd: `#` or `;` start comment lines; a trailing `\` continues.
    Systemd,
}

/// One `Key=Value` of an INI-style file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub section: String,
    pub key: String,
    pub value: String,
    pub line: usize,
}

/// Parses an INI-style file, failing on the first line that is neither a
/// comment, a section header, a setting nor a continuation.
fn parse_ini(path: &Path, text: &str, dialect: Dialect) -> Result<Vec<Setting>, ConfigError> {
    let mut settings: Vec<Setting> = Vec::new();
    let mut section: Option<String> = None;
    // Whether the previous line was a setting (or its continuation), so an
    // indented mkosi line extends it.
    let mut in_value = false;
    let mut continues = false;
    for (index, raw) in text.lines().enumerate() {
        let line_number = index + 1;
        let error = |message: String| ConfigError::new(path, Some(line_number), None, message);
        let line = match dialect {
            Dialect::Mkosi => raw.split('#').next().unwrap_or_default(),
            Dialect::Systemd if raw.trim_start().starts_with(['#', ';']) => "",
            Dialect::Systemd => raw,
        };
        if line.trim().is_empty() {
            continue;
        }
        let indented = line.starts_with([' ', '\t']);
        let is_continuation = match dialect {
            Dialect::Mkosi => indented && in_value,
            Dialect::Systemd => continues,
        };
        if is_continuation {
            let last = settings
                .last_mut()
                .expect("a continuation follows a setting");
            let piece = line.trim().trim_end_matches('\\').trim_end();
            last.value.push('\n');
            last.value.push_str(piece);
            continues = dialect == Dialect::Systemd && line.trim_end().ends_with('\\');
            continue;
        }
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            let name = header
                .strip_suffix(']')
                .ok_or_else(|| error(format!("section header {line:?} has no closing ']'")))?;
            if name.trim().is_empty() {
                return Err(error("empty section name".to_owned()));
            }
            section = Some(name.trim().to_owned());
            in_value = false;
            continue;
        }
        let (key, value) = line.split_once('=').ok_or_else(|| {
            error(format!(
                "expected `Key=Value`, a [Section] or a comment, found {line:?}"
            ))
        })?;
        let key = key.trim();
        let section = section
            .clone()
            .ok_or_else(|| error(format!("setting `{key}` comes before any [Section] header")))?;
        if key.is_empty() {
            return Err(error("a setting without a name".to_owned()));
        }
        let value = value.trim();
        continues = dialect == Dialect::Systemd && value.ends_with('\\');
        in_value = true;
        settings.push(Setting {
            section,
            key: key.to_owned(),
            value: value.trim_end_matches('\\').trim_end().to_owned(),
            line: line_number,
        });
    }
    Ok(settings)
}

/// A checked recipe directory.
#[derive(Debug)]
pub struct Recipe {
    pub dir: PathBuf,
    /// Every mkosi configuration file, in the order mkosi reads them.
    pub config_files: Vec<PathBuf>,
    /// The repart definitions, in partition order.
    pub repart_files: Vec<PathBuf>,
    /// All repart settings, by file.
    pub partitions: Vec<(PathBuf, Vec<Setting>)>,
    /// Slot A's signature partition: the signed and the unsigned variant.
    pub usr_signature_files: [PathBuf; 2],
}

impl Recipe {
    /// Finds and checks the recipe in `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let main = dir.join("mkosi.conf");
        if !main.is_file() {
            anyhow::bail!(
                "{} is not an mkosi recipe: it has no mkosi.conf",
                dir.display()
            );
        }
        let mut config_files = vec![main];
        config_files.extend(sorted_files(&dir.join("mkosi.conf.d"), "conf")?);
        for path in &config_files {
            let text = read(path)?;
            check_mkosi_file(path, &text)?;
        }
        let repart_files = sorted_files(&dir.join("mkosi.repart"), "conf")?;
        let mut partitions = Vec::new();
        for path in &repart_files {
            let text = read(path)?;
            partitions.push((path.clone(), check_repart_file(path, &text)?));
        }
        let usr_signature_files = [
            only_definition(&usr_signature_dir(dir, true))?,
            only_definition(&usr_signature_dir(dir, false))?,
        ];
        // The layout is checked as each kind of build composes it.
        for variant in &usr_signature_files {
            let mut layout = partitions.clone();
            layout.push((
                variant.clone(),
                check_repart_file(variant, &read(variant)?)?,
            ));
            check_partition_set(dir, &layout)?;
        }
        Ok(Self {
            dir: dir.to_owned(),
            config_files,
            repart_files,
            partitions,
            usr_signature_files,
        })
    }

    /// Every file the recipe consists of: what a build depends on.
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        self.config_files
            .iter()
            .chain(self.repart_files.iter())
            .chain(self.usr_signature_files.iter())
    }

    /// The repart directory that defines slot A's signature partition for
    /// a build that signs /usr (`signed`) or not.
    pub fn usr_signature_dir(&self, signed: bool) -> PathBuf {
        usr_signature_dir(&self.dir, signed)
    }
}

fn usr_signature_dir(recipe_dir: &Path, signed: bool) -> PathBuf {
    recipe_dir
        .join(USR_SIGNATURE_DIR)
        .join(if signed { "signed" } else { "unsigned" })
}

/// The one repart definition in `dir`.
fn only_definition(dir: &Path) -> Result<PathBuf> {
    match sorted_files(dir, "conf")?.as_slice() {
        [one] => Ok(one.clone()),
        found => anyhow::bail!(
            "{} must hold exactly one repart definition (slot A's signature partition), found {}",
            dir.display(),
            found.len()
        ),
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The files ending in `.extension` directly in `dir`, sorted; none if the
/// directory does not exist.
fn sorted_files(dir: &Path, extension: &str) -> Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == extension) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Checks one mkosi configuration file: syntax, sections and setting names.
pub fn check_mkosi_file(path: &Path, text: &str) -> Result<Vec<Setting>, ConfigError> {
    let settings = parse_ini(path, text, Dialect::Mkosi)?;
    for setting in &settings {
        // [Host] is the old name of [Runtime].
        let section = if setting.section == "Host" {
            "Runtime"
        } else {
            setting.section.as_str()
        };
        let Some((_, known)) = MKOSI_SETTINGS.iter().find(|(name, _)| *name == section) else {
            let sections: Vec<&str> = MKOSI_SETTINGS.iter().map(|(name, _)| *name).collect();
            return Err(ConfigError::new(
                path,
                Some(setting.line),
                Some(&setting.key),
                format!(
                    "unknown mkosi section [{}]; mkosi knows [{}]",
                    setting.section,
                    sections.join("], [")
                ),
            ));
        };
        if !known.contains(&setting.key.as_str()) {
            let elsewhere = MKOSI_SETTINGS
                .iter()
                .find(|(_, keys)| keys.contains(&setting.key.as_str()))
                .map(|(name, _)| format!(" (it belongs in [{name}])"))
                .unwrap_or_default();
            return Err(ConfigError::new(
                path,
                Some(setting.line),
                Some(&setting.key),
                format!(
                    "not an mkosi setting of section [{}]{elsewhere}",
                    setting.section
                ),
            ));
        }
    }
    Ok(settings)
}

/// Checks one repart definition: one [Partition] section, known settings,
/// a known Type= and a sensible Verity=.
pub fn check_repart_file(path: &Path, text: &str) -> Result<Vec<Setting>, ConfigError> {
    let settings = parse_ini(path, text, Dialect::Systemd)?;
    for setting in &settings {
        let error = |message: String| {
            ConfigError::new(path, Some(setting.line), Some(&setting.key), message)
        };
        if setting.section != "Partition" {
            return Err(error(format!(
                "repart definitions have only a [Partition] section, not [{}]",
                setting.section
            )));
        }
        if !REPART_SETTINGS.contains(&setting.key.as_str()) {
            return Err(error("not a systemd-repart [Partition] setting".to_owned()));
        }
        match setting.key.as_str() {
            "Type"
                if !REPART_TYPES.contains(&setting.value.as_str()) && !is_uuid(&setting.value) =>
            {
                return Err(error(format!(
                    "unknown partition type {:?}; use a Discoverable Partitions name such as usr, usr-verity, root or esp",
                    setting.value
                )));
            }
            "Verity" if !["off", "data", "hash", "signature"].contains(&setting.value.as_str()) => {
                return Err(error(format!(
                    "Verity= takes off, data, hash or signature, not {:?}",
                    setting.value
                )));
            }
            _ => {}
        }
    }
    if !settings.iter().any(|s| s.key == "Type") {
        return Err(ConfigError::new(
            path,
            None,
            Some("Type"),
            "every partition needs a Type=",
        ));
    }
    Ok(settings)
}

/// Cross-file checks: every verity data partition has its hash partition,
/// and the /usr parts the pipeline ships are split out under their names.
fn check_partition_set(
    dir: &Path,
    partitions: &[(PathBuf, Vec<Setting>)],
) -> Result<(), ConfigError> {
    let value = |settings: &[Setting], key: &str| {
        settings
            .iter()
            .find(|s| s.key == key)
            .map(|s| s.value.clone())
    };
    let mut verity_roles: BTreeMap<String, Vec<(String, PathBuf)>> = BTreeMap::new();
    for (path, settings) in partitions {
        if let (Some(role), Some(key)) =
            (value(settings, "Verity"), value(settings, "VerityMatchKey"))
        {
            verity_roles
                .entry(key)
                .or_default()
                .push((role, path.clone()));
        } else if let Some(role) = value(settings, "Verity").filter(|r| r != "off") {
            let line = settings.iter().find(|s| s.key == "Verity").map(|s| s.line);
            return Err(ConfigError::new(
                path,
                line,
                Some("VerityMatchKey"),
                format!("a Verity={role} partition needs a VerityMatchKey= pairing it with its data or hash partition"),
            ));
        }
    }
    for (key, roles) in &verity_roles {
        for needed in ["data", "hash"] {
            if !roles.iter().any(|(role, _)| role == needed) {
                let path = &roles[0].1;
                return Err(ConfigError::new(
                    path,
                    None,
                    Some("VerityMatchKey"),
                    format!("VerityMatchKey={key} has no Verity={needed} partition to pair with"),
                ));
            }
        }
    }
    for (split_name, what) in [
        (USR_SPLIT_NAME, "the /usr partition"),
        (USR_VERITY_SPLIT_NAME, "its verity hash partition"),
        (
            USR_SIGNATURE_SPLIT_NAME,
            "its root hash signature partition",
        ),
    ] {
        let found = partitions
            .iter()
            .any(|(_, settings)| value(settings, "SplitName").as_deref() == Some(split_name));
        if !found {
            return Err(ConfigError::new(
                &dir.join("mkosi.repart"),
                None,
                Some("SplitName"),
                format!("no partition has SplitName={split_name}; the build ships {what} under that name"),
            ));
        }
    }
    Ok(())
}

fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkosi(text: &str) -> Result<Vec<Setting>, ConfigError> {
        check_mkosi_file(Path::new("recipes/mkosi.conf"), text)
    }

    fn repart(text: &str) -> Result<Vec<Setting>, ConfigError> {
        check_repart_file(Path::new("recipes/mkosi.repart/10-usr.conf"), text)
    }

    #[test]
    fn mkosi_values_continue_on_indented_lines_and_drop_comments() {
        let settings = mkosi(
            "[Content]\nPackages=\n    systemd # init\n    # a comment\n    udev\nBootable=yes\n",
        )
        .unwrap();
        assert_eq!(settings.len(), 2);
        assert_eq!(settings[0].value, "\nsystemd\nudev");
        assert_eq!(
            (settings[1].key.as_str(), settings[1].line),
            ("Bootable", 6)
        );
    }

    #[test]
    fn unknown_mkosi_setting_names_file_line_and_key() {
        let err = mkosi("[Content]\nPackages=systemd\nPackage=udev\n").unwrap_err();
        assert_eq!((err.line, err.key.as_deref()), (Some(3), Some("Package")));
        assert!(
            err.to_string()
                .starts_with("recipes/mkosi.conf:3: key `Package`"),
            "{err}"
        );
    }

    #[test]
    fn setting_in_wrong_section_says_where_it_belongs() {
        let err = mkosi("[Content]\nToolsTree=default\n").unwrap_err();
        assert!(err.to_string().contains("belongs in [Build]"), "{err}");
    }

    #[test]
    fn unknown_section_and_bad_syntax_are_located() {
        let err = mkosi("[Contents]\nPackages=x\n").unwrap_err();
        assert_eq!(err.line, Some(2));
        let err = mkosi("[Content]\nPackages systemd\n").unwrap_err();
        assert_eq!(err.line, Some(2));
        let err = mkosi("Packages=systemd\n").unwrap_err();
        assert_eq!(err.line, Some(1));
        let err = mkosi("[Content\n").unwrap_err();
        assert_eq!(err.line, Some(1));
    }

    #[test]
    fn repart_checks_type_verity_and_keys() {
        assert!(repart("# c\n[Partition]\nType=usr\nVerity=data\nVerityMatchKey=usr\n").is_ok());
        let err = repart("[Partition]\nType=user\n").unwrap_err();
        assert_eq!((err.line, err.key.as_deref()), (Some(2), Some("Type")));
        let err = repart("[Partition]\nType=usr\nVerity=yes\n").unwrap_err();
        assert_eq!((err.line, err.key.as_deref()), (Some(3), Some("Verity")));
        let err = repart("[Partition]\nType=usr\nSizeMin=1G\n").unwrap_err();
        assert_eq!((err.line, err.key.as_deref()), (Some(3), Some("SizeMin")));
        let err = repart("[Partition]\nLabel=x\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("Type"));
        let err = repart("[Section]\nType=usr\n").unwrap_err();
        assert_eq!(err.line, Some(2));
    }

    #[test]
    fn repart_continuation_lines() {
        let settings = repart("[Partition]\nType=root\nCopyFiles=/a \\\n  /b\n").unwrap();
        assert_eq!(settings[1].value, "/a\n/b");
    }

    #[test]
    fn verity_pairs_must_be_complete() {
        let dir = Path::new("recipes");
        let p = |text: &str| (PathBuf::from("x.conf"), repart(text).unwrap());
        let data_only = [p(
            "[Partition]\nType=usr\nVerity=data\nVerityMatchKey=u\nSplitName=usr\n",
        )];
        let err = check_partition_set(dir, &data_only).unwrap_err();
        assert!(err.message.contains("no Verity=hash"), "{err}");
        let unpaired = [p("[Partition]\nType=usr\nVerity=data\n")];
        assert!(check_partition_set(dir, &unpaired).is_err());
    }

    #[test]
    fn usr_parts_must_be_split_out() {
        let dir = Path::new("recipes");
        let p = |text: &str| (PathBuf::from("x.conf"), repart(text).unwrap());
        let parts = [
            p("[Partition]\nType=usr\nVerity=data\nVerityMatchKey=u\nSplitName=usr\n"),
            p("[Partition]\nType=usr-verity\nVerity=hash\nVerityMatchKey=u\n"),
        ];
        let err = check_partition_set(dir, &parts).unwrap_err();
        assert!(err.message.contains("SplitName=usr-verity"), "{err}");
        let unsigned = [
            p("[Partition]\nType=usr\nVerity=data\nVerityMatchKey=u\nSplitName=usr\n"),
            p("[Partition]\nType=usr-verity\nVerity=hash\nVerityMatchKey=u\nSplitName=usr-verity\n"),
        ];
        let err = check_partition_set(dir, &unsigned).unwrap_err();
        assert!(err.message.contains("SplitName=usr-verity-sig"), "{err}");
    }
}

#[cfg(test)]
mod shipped {
    use super::*;

    /// The real recipe in this checkout parses and passes every check.
    #[test]
    fn every_shipped_recipe_file_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
        let recipe = Recipe::load(&dir).unwrap();
        assert!(recipe.config_files.len() >= 3);
        assert_eq!(recipe.repart_files.len(), 7);
        assert!(recipe
            .usr_signature_dir(true)
            .ends_with("usr-signature/signed"));
    }

    /// The emergency-reboot credential on the kernel command line is the
    /// readable drop-in next to the recipe, without its comments.
    #[test]
    fn the_emergency_reboot_credential_is_the_shipped_drop_in() {
        use base64::Engine;
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
        let conf =
            std::fs::read_to_string(dir.join("mkosi.conf.d/30-emergency-reboot.conf")).unwrap();
        let prefix = "KernelCommandLine=systemd.set_credential_binary=\
                      systemd.unit-dropin.emergency.service~50-boxcar-reboot:";
        let encoded = conf
            .lines()
            .find_map(|line| line.strip_prefix(prefix))
            .expect("the credential is on the kernel command line");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        let drop_in = std::fs::read_to_string(dir.join("emergency-reboot.conf")).unwrap();
        let without_comments: String = drop_in
            .lines()
            .skip_while(|line| line.starts_with('#'))
            .map(|line| format!("{line}\n"))
            .collect();
        assert_eq!(String::from_utf8(decoded).unwrap(), without_comments);
    }
}
