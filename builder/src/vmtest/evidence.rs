//! What a boot test observed, and the verdict on it.
//!
//! The guest reports raw facts (key=value lines); the console log adds what
//! the kernel said. Judging happens here, on the host, against build.json:
//! a guest cannot grade its own exam.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::platform::{DiskBus, Format, HypervisorBoundAgent, Platform};
use crate::records::buildinfo::BuildInfo;
use crate::records::evidence::{BootOutcome, BootTime, Check, Evidence, Milestone};

/// What the container in the guest prints when it runs.
pub const CONTAINER_GREETING: &str = "boxcar-container-ok";

/// Parses the guest's key=value report. Lines that are not key=value
/// (noise on the port) are skipped.
pub fn parse_report(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            let key = key.trim();
            let valid = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-@".contains(c));
            valid.then(|| (key.to_owned(), value.trim().to_owned()))
        })
        .collect()
}

/// The verity target line of `dmsetup table`, split into its fields.
struct VerityTable {
    root_hash: String,
    data_block_size: String,
    hash_block_size: String,
}

/// `0 625304 verity 1 254:1 254:2 4096 4096 78163 1 sha256 <root> <salt> ...`
fn parse_verity_table(table: &str) -> Option<VerityTable> {
    let fields: Vec<&str> = table.split_whitespace().collect();
    if fields.get(2) != Some(&"verity") || fields.len() < 13 {
        return None;
    }
    Some(VerityTable {
        data_block_size: fields[6].to_owned(),
        hash_block_size: fields[7].to_owned(),
        root_hash: fields[11].to_owned(),
    })
}

/// A check that the guest reported `key` as an empty list (of sockets, of
/// failures); a report that never said fails it too.
fn nothing_listed(
    report: &BTreeMap<String, String>,
    key: &str,
    name: &str,
    expected: &str,
    listed_as: &str,
) -> Check {
    let listed = report.get(key).map(|value| value.trim());
    check(
        name,
        listed == Some(""),
        expected,
        match listed {
            None => "not reported".to_owned(),
            Some("") => "none".to_owned(),
            Some(items) => format!("{listed_as}: {items}"),
        },
    )
}

pub(super) fn check(
    name: &str,
    passed: bool,
    expected: impl Into<String>,
    observed: impl Into<String>,
) -> Check {
    Check {
        name: name.to_owned(),
        passed,
        expected: expected.into(),
        observed: observed.into(),
    }
}

/// What ROOT should look like on a platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootExpectation {
    /// ROOT is the disk's last partition and grew beyond its built size.
    Grows { built_bytes: u64 },
    /// Diskless: the root is a tmpfs.
    Tmpfs,
}

/// What a boot of one platform's artifact must show, beyond the build.
pub struct Expectations<'a> {
    pub platform: &'a Platform,
    /// Every platform of the build, for the units that must stay off.
    pub all_platforms: &'a [Platform],
    pub root: RootExpectation,
    /// The hostname the platform's metadata service hands out, when the
    /// test imitates one (and no config sets another).
    pub hostname: Option<String>,
    /// Whether sshd should listen: only a provisioned machine gives an
    /// account a key.
    pub ssh: bool,
    /// Whether the firmware enforced Secure Boot with the build's
    /// certificate enrolled.
    pub secure_boot: bool,
}

/// Under enforcing Secure Boot: the firmware says so, the kernel, seeing
/// it, locked itself down (no unsigned modules, no /dev/mem, no kexec of
/// unsigned kernels), and it checked /usr's root hash signature before
/// /usr was set up.
pub fn secure_boot_checks(report: &BTreeMap<String, String>) -> Vec<Check> {
    let get = |key: &str| report.get(key).map(String::as_str).unwrap_or("");
    let lockdown = get("lockdown");
    vec![
        check(
            "the kernel verified the /usr root hash signature",
            get("usr_signature").starts_with("verified by the kernel"),
            "verified by the kernel",
            get("usr_signature"),
        ),
        check(
            "the firmware enforces Secure Boot",
            get("secure_boot") == "enabled",
            "enabled",
            get("secure_boot"),
        ),
        check(
            "the kernel is locked down",
            lockdown.contains("[integrity]") || lockdown.contains("[confidentiality]"),
            "[integrity] or [confidentiality]",
            lockdown,
        ),
    ]
}

/// The reports of each boot of one VM run, in order (a guest that reboots
/// reports once a boot).
pub fn split_boots(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut boots = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.trim() == "begin=1" && !current.is_empty() {
            boots.push(parse_report(&current));
            current.clear();
        }
        current.push_str(line);
        current.push('\n');
    }
    if !current.is_empty() {
        boots.push(parse_report(&current));
    }
    boots
}

/// Who can get in: never anyone with a password, and over SSH only once
/// provisioning gave an account a key (`ssh`); an unprovisioned host must
/// refuse a connection to port 22 outright. Either way sshd runs only as
/// ssh.service, never from a socket of its own (systemd's ssh generator
/// adds AF_UNIX and AF_VSOCK ones unless told not to).
fn access_checks(report: &BTreeMap<String, String>, ssh: bool) -> Vec<Check> {
    let get = |key: &str| report.get(key).map(String::as_str).unwrap_or("");
    let listeners = get("ssh_listeners").parse::<u32>().unwrap_or(0);
    vec![
        nothing_listed(
            report,
            "ssh_sockets",
            "sshd starts only as ssh.service",
            "no active ssh*.socket unit",
            "active",
        ),
        check(
            "no account can log in with a password",
            report.contains_key("password_accounts") && get("password_accounts").is_empty(),
            "every password locked",
            if get("password_accounts").is_empty() {
                "none".to_owned()
            } else {
                format!("usable passwords: {}", get("password_accounts"))
            },
        ),
        if ssh {
            check(
                "sshd listens once an account has a key",
                listeners > 0,
                "a listener on port 22",
                format!("{listeners} listeners"),
            )
        } else {
            check(
                "an unprovisioned host exposes no SSH",
                report.contains_key("ssh_listeners")
                    && listeners == 0
                    && get("ssh_connect").contains("Connection refused"),
                "nothing listening on port 22; a connection is refused",
                format!(
                    "{} listeners; connecting: {}",
                    get("ssh_listeners"),
                    get("ssh_connect")
                ),
            )
        },
    ]
}

/// Judges a boot of a platform's artifact against the build.
pub fn judge_platform(
    report: &BTreeMap<String, String>,
    build: &BuildInfo,
    outcome: BootOutcome,
    expect: &Expectations,
) -> Vec<Check> {
    let get = |key: &str| report.get(key).map(String::as_str).unwrap_or("");
    let mut checks = judge_common(report, build, outcome);
    match expect.root {
        RootExpectation::Grows { built_bytes } => {
            let grown = get("root_partition_bytes").parse::<u64>().unwrap_or(0);
            let fs = get("root_filesystem_bytes").parse::<u64>().unwrap_or(0);
            checks.push(check(
                "ROOT grew to fill the disk",
                grown > built_bytes && fs > built_bytes * 9 / 10,
                format!("partition and file system larger than the built {built_bytes} bytes"),
                format!("partition {grown} bytes, file system {fs} bytes"),
            ));
        }
        RootExpectation::Tmpfs => checks.push(check(
            "the root is a tmpfs",
            get("root_fstype") == "tmpfs",
            "tmpfs",
            format!("{} from {}", get("root_fstype"), get("root_source")),
        )),
    }
    checks.push(failed_units_check(
        get("failed_units"),
        &expect.platform.units,
    ));
    checks.push(missing_units_check(get("missing_units")));
    checks.push(dma_zone_check(get("dma_zone_protection")));
    checks.extend(access_checks(report, expect.ssh));
    checks.extend(update_agent_checks(
        report,
        expect.platform.format == Format::Pxe,
    ));
    checks.push(udev_rules_check(get("udev_rules_verify")));
    if expect.secure_boot {
        checks.extend(secure_boot_checks(report));
    }
    if expect.platform.disk_bus == DiskBus::Nvme {
        checks.push(ebs_name_check(
            get("nvme_identify_bytes"),
            get("ebs_device_name"),
        ));
    }
    let id = expect.platform.id.as_str();
    checks.push(check(
        "the platform id is the expected one",
        get("platform") == id,
        id,
        get("platform"),
    ));
    let verdicts: Vec<(bool, String)> = expect
        .platform
        .units
        .iter()
        .map(|unit| agent_verdict(report, expect.platform, unit))
        .collect();
    checks.push(check(
        "the platform's agents are active",
        verdicts.iter().all(|(ok, _)| *ok),
        if verdicts.is_empty() {
            "none to run".to_owned()
        } else {
            expect
                .platform
                .units
                .iter()
                .map(|u| expected_agent_state(expect.platform, u))
                .collect::<Vec<_>>()
                .join("; ")
        },
        if verdicts.is_empty() {
            "none".to_owned()
        } else {
            verdicts
                .iter()
                .map(|(_, seen)| seen.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        },
    ));
    let foreign: Vec<&String> = expect
        .all_platforms
        .iter()
        .filter(|p| p.id != expect.platform.id)
        .flat_map(|p| &p.units)
        .filter(|u| !expect.platform.units.contains(u))
        .collect();
    let running: Vec<&str> = foreign
        .iter()
        .filter(|u| get(&format!("unit.{u}")) == "active")
        .map(|u| u.as_str())
        .collect();
    checks.push(check(
        "other platforms' agents stay off",
        running.is_empty(),
        "none of them active",
        if running.is_empty() {
            "none active".to_owned()
        } else {
            format!("active: {}", running.join(", "))
        },
    ));
    if let Some(hostname) = &expect.hostname {
        // A configured hostname (provisioning writes /etc/hostname) wins over
        // the metadata's, which the platform's agent still reads.
        checks.push(if expect.ssh {
            check(
                "the metadata service's hostname was read, the configured one kept",
                get("metadata_hostname") == hostname && get("hostname") != hostname,
                format!("metadata said {hostname}; the host kept its configured name"),
                format!(
                    "metadata said {:?}; hostname {}",
                    get("metadata_hostname"),
                    get("hostname")
                ),
            )
        } else {
            check(
                "the hostname came from the platform's metadata service",
                get("hostname") == hostname && get("metadata_hostname") == hostname,
                hostname.clone(),
                get("hostname"),
            )
        });
    }
    checks
}

/// udev accepts the rules files the image adds (`udevadm verify`).
fn udev_rules_check(verify: &str) -> Check {
    check(
        "udev accepts the image's own rules",
        verify.ends_with("exit=0"),
        "udevadm verify succeeds",
        verify,
    )
}

/// On an NVMe boot disk, the EBS name helper gets the controller's identify
/// data from nvme-cli and, qemu's disk being no EBS volume, names nothing.
/// `identify_bytes` is the size nvme-cli printed, then whatever it said on
/// stderr.
fn ebs_name_check(identify_bytes: &str, name: &str) -> Check {
    check(
        "the EBS name helper reads the NVMe disk and names no EBS volume here",
        identify_bytes.split_whitespace().next() == Some("4096")
            && name.contains("no EBS device name")
            && name.ends_with("exit=1"),
        "4096 bytes of identify data; no EBS device name, exit 1",
        format!("{identify_bytes} bytes of identify data; {name}"),
    )
}

/// The platform's agent `unit`, if it talks to its hypervisor through an
/// interface qemu cannot offer the guest (the platform table's
/// hypervisor-bound-agents). Under qemu such an agent can only be shown to
/// start where it should (its platform condition held and systemd ran it)
/// and to fail because its check says this is not its hypervisor.
fn hypervisor_bound<'a>(platform: &'a Platform, unit: &str) -> Option<&'a HypervisorBoundAgent> {
    platform
        .hypervisor_bound_agents
        .iter()
        .find(|agent| agent.unit == unit)
}

/// What a platform's agent unit must show.
fn expected_agent_state(platform: &Platform, unit: &str) -> String {
    if hypervisor_bound(platform, unit).is_some() {
        format!("{unit} active, or under qemu started where its platform condition holds")
    } else {
        format!("{unit} active")
    }
}

/// Whether one of the platform's agent units did its part, and what was seen.
fn agent_verdict(
    report: &BTreeMap<String, String>,
    platform: &Platform,
    unit: &str,
) -> (bool, String) {
    let get = |key: &str| report.get(key).map(String::as_str).unwrap_or("");
    let state = get(&format!("unit.{unit}"));
    if state == "active" {
        return (true, format!("{unit}: active"));
    }
    let info = get(&format!("unitinfo.{unit}"));
    let property = |name: &str| {
        info.split_whitespace()
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or("")
    };
    let started = property("ConditionResult") == "yes"
        && property("ExecMainStartTimestampMonotonic")
            .parse::<u64>()
            .unwrap_or(0)
            > 0;
    match hypervisor_bound(platform, unit) {
        Some(agent) if started && get(&agent.report_key()).contains(&agent.check_outside) => (
            true,
            format!(
                "{unit}: started under its platform condition, then exited with status {} because qemu is not \
                 the real hypervisor ({})",
                property("ExecMainStatus"),
                get(&agent.report_key())
            ),
        ),
        _ => (false, format!("{unit}: {state} ({info})")),
    }
}

/// What every boot must show: up, running the build's verity-protected
/// /usr read-only, and running containers.
fn judge_common(
    report: &BTreeMap<String, String>,
    build: &BuildInfo,
    outcome: BootOutcome,
) -> Vec<Check> {
    let get = |key: &str| report.get(key).map(String::as_str).unwrap_or("");
    let mut checks = vec![
        check(
            "guest reported and powered off",
            outcome == BootOutcome::PoweredOff && get("end") == "1",
            "a complete report, then power-off",
            format!(
                "{outcome:?}, report {}",
                if get("end") == "1" {
                    "complete"
                } else {
                    "incomplete"
                }
            ),
        ),
        check(
            "reached multi-user",
            get("multi_user") == "active",
            "multi-user.target active",
            get("multi_user"),
        ),
        check(
            "booted the built version",
            get("os_image_version") == build.version.as_str(),
            build.version.as_str(),
            get("os_image_version"),
        ),
    ];
    let table = parse_verity_table(get("usr_dm_table"));
    checks.push(check(
        "/usr is a dm-verity device",
        get("usr_source").starts_with("/dev/mapper/") && table.is_some(),
        "/usr mounted from /dev/mapper/*, a verity target",
        format!("{} ({})", get("usr_source"), get("usr_dm_table")),
    ));
    checks.push(check(
        "verity root hash is the build's",
        table
            .as_ref()
            .is_some_and(|t| t.root_hash == build.usr.root_hash),
        build.usr.root_hash.clone(),
        table
            .as_ref()
            .map(|t| t.root_hash.clone())
            .unwrap_or_default(),
    ));
    checks.push(check(
        "verity block sizes are the build's",
        table.as_ref().is_some_and(|t| {
            t.data_block_size == build.usr.data_block_size.to_string()
                && t.hash_block_size == build.usr.hash_block_size.to_string()
        }),
        format!(
            "{} {}",
            build.usr.data_block_size, build.usr.hash_block_size
        ),
        table
            .as_ref()
            .map(|t| format!("{} {}", t.data_block_size, t.hash_block_size))
            .unwrap_or_default(),
    ));
    checks.push(check(
        "verity saw no corruption",
        get("usr_dm_status").split_whitespace().nth(3) == Some("V"),
        "dmsetup status ends in V (verified)",
        get("usr_dm_status"),
    ));
    let options: Vec<&str> = get("usr_options").split(',').collect();
    checks.push(check(
        "/usr is mounted read-only",
        options.first() == Some(&"ro") && get("usr_fstype") == build.usr.filesystem,
        format!("{} mounted ro", build.usr.filesystem),
        format!("{} {}", get("usr_fstype"), get("usr_options")),
    ));
    checks.push(check(
        "a write to /usr is refused",
        get("usr_write").starts_with("refused") && get("usr_remount_rw").starts_with("refused"),
        "both a file write and a read-write remount refused",
        format!(
            "write: {}; remount: {}",
            get("usr_write"),
            get("usr_remount_rw")
        ),
    ));
    checks.extend(container_runtime_checks(report));
    checks.push(check(
        "boot time was recorded",
        boot_time(report).is_some(),
        "systemd-analyze timestamps",
        get("analyze"),
    ));
    checks
}

/// The container runtime: containerd is up and loaded every plugin it was
/// not told to skip (it starts even when one fails, e.g. because another
/// it needs was disabled); docker's socket listens, docker answers its
/// first request (which starts it when nothing has yet), and runs a
/// container.
fn container_runtime_checks(report: &BTreeMap<String, String>) -> Vec<Check> {
    let get = |key: &str| report.get(key).map(String::as_str).unwrap_or("");
    vec![
        check(
            "containerd is active",
            get("containerd") == "active",
            "active",
            get("containerd"),
        ),
        nothing_listed(
            report,
            "containerd_plugin_failures",
            "containerd loaded all its plugins",
            "no \"failed to load plugin\" in its log",
            "failed",
        ),
        check(
            "docker's socket listens",
            get("docker_socket") == "active",
            "docker.socket active",
            get("docker_socket"),
        ),
        check(
            "docker answered its first request",
            get("docker_first_answer").starts_with(|c: char| c.is_ascii_digit()),
            "its version",
            get("docker_first_answer"),
        ),
        check(
            "docker is active",
            get("docker") == "active",
            "active",
            get("docker"),
        ),
        check(
            "docker ran a container",
            get("container_output") == CONTAINER_GREETING,
            CONTAINER_GREETING,
            get("container_output"),
        ),
    ]
}

/// What an update test must show: the versions before and after, and the
/// A/B slots each lives in (data and hash partition numbers).
#[derive(Clone, Debug)]
pub struct UpdateExpectation {
    pub old_version: String,
    pub new_version: String,
    pub old_slot: (u32, u32),
    pub new_slot: (u32, u32),
    /// The partition the new /usr's root hash signature goes to.
    pub new_signature: Option<u32>,
}

/// Judges an update test: everything a normal boot needs holds for this
/// build after the reboot, and the update itself went as A/B updates must
/// (see `update_checks`).
pub fn judge_update(
    report: &BTreeMap<String, String>,
    build: &BuildInfo,
    outcome: BootOutcome,
    expect: &UpdateExpectation,
) -> Vec<Check> {
    let mut checks = update_checks(report, expect);
    checks.extend(judge_common(report, build, outcome));
    // The older build's disk image booted as downloaded: nobody provisioned it.
    checks.extend(access_checks(report, false));
    checks
}

/// The update itself: the older version booted first and installed the new
/// one with systemd-sysupdate, its UKI with a boot counter; after the
/// reboot /usr comes from the other slot, the boot loader picked the new
/// UKI and the boot was blessed, and the older version is still there to
/// fall back to.
fn update_checks(report: &BTreeMap<String, String>, expect: &UpdateExpectation) -> Vec<Check> {
    let get = |key: &str| report.get(key).map(String::as_str).unwrap_or("");
    let (new, old) = (expect.new_version.as_str(), expect.old_version.as_str());
    let new_usr = slot_labels(new, expect.new_slot);
    let old_usr = slot_labels(old, expect.old_slot);
    let ukis = get("update.ukis");
    let partitions = get("update.partitions");
    let mut checks = install_checks(report, expect);
    checks.extend([
        check(
            "/usr came from the other slot",
            get("update.usr") == new_usr,
            new_usr.clone(),
            get("update.usr"),
        ),
        check(
            "the boot loader picked the new UKI",
            get("update.loader_entry").starts_with(&format!("boxcar_{new}")),
            format!("boxcar_{new}*.efi"),
            get("update.loader_entry"),
        ),
        check(
            "the boot was counted good (blessed)",
            has_word(ukis, &format!("boxcar_{new}.efi")),
            format!("boxcar_{new}.efi, its boot counter dropped"),
            ukis,
        ),
        match expect.new_signature {
            Some(number) => {
                let label = format!("{number}:boxcar_{new}_sig");
                check(
                    "the new /usr's signature went to the other slot",
                    has_word(partitions, &label),
                    label,
                    partitions,
                )
            }
            None => check(
                "the new /usr's signature went to the other slot",
                true,
                "(an older layout without signature partitions)",
                partitions,
            ),
        },
        refreshed_check(get("update.refreshed")),
        check(
            "the older version is kept to fall back to",
            has_word(ukis, &format!("boxcar_{old}.efi"))
                && old_usr.split(' ').all(|part| has_word(partitions, part)),
            format!("boxcar_{old}.efi, and {old_usr}"),
            format!("UKIs: {ukis}; partitions: {partitions}"),
        ),
    ]);
    checks
}

/// The new /usr's first boot brought /etc and /var up to date for it: the
/// units with `ConditionNeedsUpdate=` ran, although both builds may share
/// /usr's time (two builds of one commit do).
fn refreshed_check(refreshed: &str) -> Check {
    let units = [
        "ldconfig.service",
        "systemd-sysusers.service",
        "systemd-update-done.service",
    ];
    check(
        "the new /usr's first boot refreshed /etc and /var",
        units
            .iter()
            .all(|unit| has_word(refreshed, &format!("{unit}=yes"))),
        "ldconfig, sysusers and update-done ran",
        if refreshed.is_empty() {
            "not reported"
        } else {
            refreshed
        },
    )
}

/// "number:label" of a slot's data and hash partitions holding `version`,
/// as the guest reports them.
fn slot_labels(version: &str, (data, hash): (u32, u32)) -> String {
    format!("{data}:boxcar_{version} {hash}:boxcar_{version}_verity")
}

/// What the first boot of every update test must show: the older version
/// ran from its slot and installed the new one, whose UKI got its tries.
fn install_checks(report: &BTreeMap<String, String>, expect: &UpdateExpectation) -> Vec<Check> {
    let get = |key: &str| report.get(key).map(String::as_str).unwrap_or("");
    let old = expect.old_version.as_str();
    let old_usr = slot_labels(old, expect.old_slot);
    vec![check(
        "the older version booted first",
        get("update.before_version") == old && get("update.before_usr") == old_usr,
        format!("{old} from {old_usr}"),
        format!(
            "{} from {}",
            get("update.before_version"),
            get("update.before_usr")
        ),
    )]
}

/// Judges an update whose new version fails: the new UKI was installed
/// with its tries, every one of them failed and rebooted, and the older
/// build came back from its own slot, intact and working, with the new UKI
/// marked bad. `older` is the build that must be
/// running at the end; `kernel_starts` counts the boots the console saw.
pub fn judge_fallback(
    report: &BTreeMap<String, String>,
    older: &BuildInfo,
    outcome: BootOutcome,
    expect: &UpdateExpectation,
    kernel_starts: usize,
) -> Vec<Check> {
    let mut checks = fallback_checks(report, expect, kernel_starts);
    checks.extend(judge_common(report, older, outcome));
    checks
}

/// The tries a new UKI gets (overlays/base/usr/lib/sysupdate.d/30-uki.transfer).
pub const UKI_TRIES: usize = 3;

fn fallback_checks(
    report: &BTreeMap<String, String>,
    expect: &UpdateExpectation,
    kernel_starts: usize,
) -> Vec<Check> {
    let get = |key: &str| report.get(key).map(String::as_str).unwrap_or("");
    let (new, old) = (expect.new_version.as_str(), expect.old_version.as_str());
    let old_usr = slot_labels(old, expect.old_slot);
    let ukis = get("update.ukis");
    let spent = format!("boxcar_{new}+0-{UKI_TRIES}.efi");
    // The older build's first boot, one per try, and its boot at the end.
    let boots = UKI_TRIES + 2;
    let mut checks = install_checks(report, expect);
    checks.extend([
        check(
            "every try of the new version failed and rebooted",
            kernel_starts == boots,
            format!("{boots} kernel starts: the old version, {UKI_TRIES} tries, the old version"),
            format!("{kernel_starts} kernel starts"),
        ),
        check(
            "the new UKI's tries are used up",
            has_word(ukis, &spent),
            spent.clone(),
            ukis,
        ),
        check(
            "the boot loader fell back to the older UKI",
            get("update.loader_entry").starts_with(&format!("boxcar_{old}")),
            format!("boxcar_{old}*.efi"),
            get("update.loader_entry"),
        ),
        check(
            "/usr came from the older slot",
            get("update.usr") == old_usr,
            old_usr.clone(),
            get("update.usr"),
        ),
    ]);
    checks
}

/// No unit failed during the boot. The platform's own agents are left to
/// the agents check, which knows the one that cannot run under emulation.
fn failed_units_check(failed: &str, platform_units: &[String]) -> Check {
    let unexpected: Vec<&str> = failed
        .split_whitespace()
        .filter(|unit| !platform_units.iter().any(|u| u == unit))
        .collect();
    check(
        "no unit failed",
        unexpected.is_empty(),
        "no failed units (the platform's agents aside)",
        if failed.is_empty() {
            "none".to_owned()
        } else {
            failed.to_owned()
        },
    )
}

/// No unit is wanted or required without being in the image: a unit file
/// removed to keep the image lean while something still pulls it in
/// (mkosi.conf.d/50-lean.conf and the link cleanup in mkosi.finalize).
fn missing_units_check(missing: &str) -> Check {
    check(
        "every wanted unit is in the image",
        missing.trim().is_empty(),
        "no not-found unit that another unit wants or requires",
        if missing.trim().is_empty() {
            "none".to_owned()
        } else {
            missing.trim().to_owned()
        },
    )
}

/// The DMA zone is lent to ordinary allocations (the image's
/// usr/lib/sysctl.d/50-boxcar.conf): its protection against every higher
/// zone, in pages, is zero. On by default, it keeps up to 15 MiB out of
/// every process's reach.
fn dma_zone_check(protection: &str) -> Check {
    let pages: Vec<&str> = protection
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .collect();
    check(
        "the DMA zone is not held back",
        !protection.is_empty() && pages.iter().all(|p| *p == "0"),
        "a protection of 0 pages against every zone",
        if protection.is_empty() {
            "no DMA zone in /proc/zoneinfo".to_owned()
        } else {
            protection.to_owned()
        },
    )
}

/// The update agent runs (it is skipped on a diskless boot, which has no
/// slots), and the boot passed the health check that gates blessing. Only
/// the agent installs updates: systemd-sysupdate's own timers, which would
/// install whatever is staged and reboot at a fixed hour, are off. The boot
/// loader's upkeep is scheduled after the boot.
fn update_agent_checks(report: &BTreeMap<String, String>, diskless: bool) -> Vec<Check> {
    let get = |key: &str| report.get(key).map(String::as_str).unwrap_or("");
    let agent = if diskless {
        "ActiveState=inactive ConditionResult=no Result=success"
    } else {
        "ActiveState=active ConditionResult=yes Result=success"
    };
    let health = "ActiveState=active Result=success";
    // A network boot has no systemd-boot and no UKI: nothing to look after.
    let upkeep = if diskless {
        "ConditionResult=no Result=success"
    } else {
        "ConditionResult=yes Result=success"
    };
    vec![
        check(
            if diskless {
                "the update agent is skipped (no disk)"
            } else {
                "the update agent runs"
            },
            get("agent_service") == agent,
            agent,
            get("agent_service"),
        ),
        check(
            "the boot passed its health check",
            get("health_service") == health,
            health,
            get("health_service"),
        ),
        check(
            "systemd-sysupdate's own timers are off",
            get("sysupdate_timers") == SYSUPDATE_TIMERS_OFF,
            SYSUPDATE_TIMERS_OFF,
            get("sysupdate_timers"),
        ),
        check(
            "the boot loader's upkeep is scheduled and succeeds",
            get("boot_loader_timer") == "enabled" && get("boot_loader_service") == upkeep,
            format!("timer enabled; service {upkeep}"),
            format!(
                "timer {}; service {}",
                get("boot_loader_timer"),
                get("boot_loader_service")
            ),
        ),
    ]
}

/// `systemctl is-enabled` of systemd-sysupdate.timer and
/// systemd-sysupdate-reboot.timer, as the guest reports it.
const SYSUPDATE_TIMERS_OFF: &str = "disabled disabled";

/// Whether a space-separated list holds `word`.
fn has_word(list: &str, word: &str) -> bool {
    list.split_whitespace().any(|w| w == word)
}

/// Judges a boot of a tampered image: verity must have caught the change
/// and the system must not have run on the tampered /usr.
pub fn judge_tamper(
    report: &BTreeMap<String, String>,
    verity_errors: &[String],
    outcome: BootOutcome,
) -> Vec<Check> {
    let status_corrupt = report
        .get("usr_dm_status")
        .is_some_and(|s| s.split_whitespace().nth(3) == Some("C"));
    let reached = report.get("multi_user").map(String::as_str) == Some("active");
    vec![
        check(
            "verity detected the tampering",
            !verity_errors.is_empty() || status_corrupt,
            "a dm-verity corruption error",
            if verity_errors.is_empty() {
                "no verity error on the console".to_owned()
            } else {
                verity_errors[0].clone()
            },
        ),
        check(
            "the tampered /usr was not used",
            !reached || status_corrupt,
            "boot stopped before multi-user (or reads failed)",
            format!(
                "{outcome:?}, multi-user {}",
                if reached { "reached" } else { "not reached" }
            ),
        ),
    ]
}

/// Judges the boot of a disk whose UKI was tampered with, under enforcing
/// Secure Boot: the boot loader must have refused that UKI, and no kernel
/// may have started.
pub fn judge_tamper_uki(
    uki_path: &str,
    refusals: &[String],
    kernel_starts: usize,
    outcome: BootOutcome,
) -> Vec<Check> {
    let refused_uki = refusals.iter().find(|line| line.contains(uki_path));
    vec![
        check(
            "the tampered UKI was refused",
            refused_uki.is_some(),
            format!("systemd-boot refusing {uki_path}"),
            refused_uki
                .or(refusals.first())
                .cloned()
                .unwrap_or_else(|| "no refusal on the console".to_owned()),
        ),
        check(
            "no kernel started",
            kernel_starts == 0,
            "0 kernel starts",
            format!("{kernel_starts} kernel starts ({outcome:?})"),
        ),
    ]
}

/// What the initrd prints when the kernel refuses /usr's root hash
/// signature (recipes/initrd/usr/lib/boxcar/usr-verity-setup).
pub const KERNEL_REFUSED_SIGNATURE: &str = "the kernel refused the /usr root hash signature";

/// What dm-verity prints when it refuses a root hash signature.
pub const KERNEL_REFUSED_ROOT_HASH: &str = "Root hash verification failed";

/// Judges the boot of a disk whose /usr root hash signature was altered,
/// under enforcing Secure Boot: the kernel must have refused the signature
/// (dm-verity says so, and the initrd), and the boot must have stopped
/// before /usr was used.
pub fn judge_tamper_usr_signature(
    report: &BTreeMap<String, String>,
    refusals: &[String],
    kernel_errors: &[String],
    outcome: BootOutcome,
) -> Vec<Check> {
    let refused = refusals
        .iter()
        .find(|line| line.contains(KERNEL_REFUSED_SIGNATURE));
    let kernel = kernel_errors
        .iter()
        .find(|line| line.contains(KERNEL_REFUSED_ROOT_HASH));
    let reached = report.get("multi_user").map(String::as_str) == Some("active");
    vec![
        check(
            "dm-verity refused the tampered signature",
            kernel.is_some(),
            KERNEL_REFUSED_ROOT_HASH,
            kernel
                .cloned()
                .unwrap_or_else(|| "no dm-verity refusal on the console".to_owned()),
        ),
        check(
            "the initrd refused to use /usr",
            refused.is_some(),
            KERNEL_REFUSED_SIGNATURE,
            refused
                .or(refusals.first())
                .cloned()
                .unwrap_or_else(|| "no refusal on the console".to_owned()),
        ),
        check(
            "the boot stopped before /usr was used",
            !reached && outcome != BootOutcome::PoweredOff,
            "no multi-user, no report",
            format!(
                "{outcome:?}, multi-user {}",
                if reached { "reached" } else { "not reached" }
            ),
        ),
    ]
}

/// Judges a boot with a config Ignition must refuse.
pub fn judge_bad_config(
    report: &BTreeMap<String, String>,
    ignition_errors: &[String],
    expected_error: &str,
    halted: bool,
    kernel_starts: usize,
    outcome: BootOutcome,
) -> Vec<Check> {
    vec![
        check(
            "Ignition's error is on the console",
            ignition_errors
                .iter()
                .any(|line| line.contains("Ignition failed") && line.contains(expected_error)),
            format!("Ignition failed: ...{expected_error}"),
            ignition_errors
                .last()
                .cloned()
                .unwrap_or_else(|| "none".to_owned()),
        ),
        check(
            "the first boot stopped before the system came up",
            report.get("multi_user").is_none() && !report.contains_key("begin"),
            "no multi-user, no report",
            format!("{outcome:?}"),
        ),
        check(
            "it stopped instead of rebooting",
            halted && kernel_starts == 1,
            "one kernel start, then a halt",
            format!(
                "{kernel_starts} kernel starts, {}",
                if halted { "halted" } else { "not halted" }
            ),
        ),
    ]
}

/// Splits the boot time from the guest's systemd timestamps.
pub fn boot_time(report: &BTreeMap<String, String>) -> Option<BootTime> {
    let stamps: BTreeMap<&str, u64> = report
        .get("timestamps")?
        .split_whitespace()
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            Some((key, value.parse().ok()?))
        })
        .collect();
    let seconds = |us: u64| (us as f64 / 1e4).round() / 100.0;
    let firmware = stamps
        .get("FirmwareTimestampMonotonic")
        .copied()
        .filter(|&t| t > 0);
    let loader = stamps
        .get("LoaderTimestampMonotonic")
        .copied()
        .filter(|&t| t > 0);
    let initrd = stamps
        .get("InitRDTimestampMonotonic")
        .copied()
        .filter(|&t| t > 0);
    let userspace = *stamps.get("UserspaceTimestampMonotonic")?;
    let finish = *stamps.get("FinishTimestampMonotonic")?;
    if finish == 0 || userspace == 0 {
        return None;
    }
    let multi_user = report
        .get("multi_user_reached_us")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&t| t > userspace);
    Some(BootTime {
        firmware: firmware.map(|f| seconds(f.saturating_sub(loader.unwrap_or(0)))),
        loader: loader.map(seconds),
        kernel: seconds(initrd.unwrap_or(userspace)),
        initrd: initrd.map(|i| seconds(userspace - i)),
        userspace: seconds(finish - userspace),
        total: seconds(firmware.unwrap_or(0) + finish),
        multi_user_after_userspace: multi_user.map(|m| seconds(m - userspace)),
        systemd_analyze: report.get("analyze").cloned().unwrap_or_default(),
        early_boot_source: firmware.map(|_| "guest".to_owned()),
    })
}

/// Console events that bound the firmware and the boot loader.
pub const LOADER_STARTED: &str = "firmware started the boot loader";
pub const KERNEL_STARTED: &str = "the UKI's kernel is starting";
pub const KERNEL_RUNNING: &str = "the kernel is running";

/// Fills in firmware and loader times from the host's view of the console
/// when the guest could not measure them, and adds them to the total.
pub fn add_early_boot_from_console(time: &mut BootTime, milestones: &[Milestone]) {
    if time.firmware.is_some() {
        return;
    }
    let at = |event: &str| {
        milestones
            .iter()
            .find(|m| m.event == event)
            .map(|m| m.seconds)
    };
    let round = |v: f64| (v * 100.0).round() / 100.0;
    if let (Some(loader_started), Some(kernel_started)) = (at(LOADER_STARTED), at(KERNEL_STARTED)) {
        time.firmware = Some(loader_started);
        time.loader = Some(round(kernel_started - loader_started));
        time.total = round(time.total + kernel_started);
        time.early_boot_source = Some("host console".to_owned());
    } else if let Some(kernel_running) = at(KERNEL_RUNNING) {
        // A network boot: the firmware, iPXE and the download of the kernel
        // and initrd, until the kernel's first console line.
        time.firmware = Some(kernel_running);
        time.total = round(time.total + kernel_running);
        time.early_boot_source = Some(
            "host console: firmware, iPXE and the kernel and initrd download together".to_owned(),
        );
    }
}

/// The human summary, `summary.txt`.
pub fn summary(evidence: &Evidence) -> String {
    let mut text = String::new();
    let verdict = if evidence.passed { "PASSED" } else { "FAILED" };
    let _ = writeln!(
        text,
        "Boxcar {} boot test ({}) of {} on platform {}: {verdict}",
        evidence.version,
        evidence.case.name(),
        evidence.artifact,
        evidence.platform
    );
    let _ = writeln!(text, "hardware: {}", evidence.hardware);
    if let Some(tampering) = &evidence.tampering {
        let _ = writeln!(text, "tampering: {tampering}");
    }
    let _ = writeln!(
        text,
        "accelerator: {} ({}); outcome: {:?} after {:.1}s wall clock",
        evidence.accelerator, evidence.accelerator_reason, evidence.outcome, evidence.wall_seconds
    );
    if let Some(earlier) = &evidence.earlier_attempt {
        let _ = writeln!(text, "booted twice: {earlier}");
    }
    if let Some(t) = &evidence.boot_time {
        let part = |name: &str, value: Option<f64>| value.map(|v| format!("{v:.2}s ({name})"));
        let parts: Vec<String> = [
            part("firmware", t.firmware),
            part("loader", t.loader),
            part("kernel", Some(t.kernel)),
            part("initrd", t.initrd),
            part("userspace", Some(t.userspace)),
        ]
        .into_iter()
        .flatten()
        .collect();
        let _ = writeln!(text, "boot time: {} = {:.2}s", parts.join(" + "), t.total);
        if let Some(source) = &t.early_boot_source {
            let _ = writeln!(text, "firmware and loader times from: {source}");
        }
        if let Some(m) = t.multi_user_after_userspace {
            let _ = writeln!(text, "multi-user.target reached {m:.2}s into userspace");
        }
    }
    if !evidence.milestones.is_empty() {
        let _ = writeln!(text, "console timeline (seconds from qemu start):");
        for m in &evidence.milestones {
            let _ = writeln!(text, "  {:>6.1}  {}", m.seconds, m.event);
        }
    }
    for line in &evidence.verity_errors {
        let _ = writeln!(text, "kernel: {line}");
    }
    for line in &evidence.boot_refusals {
        let _ = writeln!(text, "refused: {line}");
    }
    let _ = writeln!(text);
    for c in &evidence.checks {
        let mark = if c.passed { "ok  " } else { "FAIL" };
        let _ = writeln!(text, "[{mark}] {}", c.name);
        if !c.passed {
            let _ = writeln!(
                text,
                "         expected: {}\n         observed: {}",
                c.expected, c.observed
            );
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "0 625304 verity 1 254:1 254:2 4096 4096 78163 1 sha256 \
        6fa31b6fc0d1b24208da89aceb6c979f8f9ef8cef37ac556583da9e6bcc7b163 e8c8 1 ignore_zero_blocks";

    fn update_expectation() -> UpdateExpectation {
        UpdateExpectation {
            old_version: "1.0".into(),
            new_version: "1.1".into(),
            old_slot: (2, 3),
            new_slot: (4, 5),
            new_signature: Some(6),
        }
    }

    /// What the guest reports after a good update from 1.0 to 1.1.
    const GOOD_UPDATE: &str = "update.before_version=1.0
update.before_usr=2:boxcar_1.0 3:boxcar_1.0_verity
update.sysupdate=ok
update.installed_ukis=boxcar_1.0.efi boxcar_1.1+3-0.efi
update.usr=4:boxcar_1.1 5:boxcar_1.1_verity
update.loader_entry=boxcar_1.1.efi
update.ukis=boxcar_1.0.efi boxcar_1.1.efi
update.partitions=1:esp 2:boxcar_1.0 3:boxcar_1.0_verity 4:boxcar_1.1 5:boxcar_1.1_verity 6:boxcar_1.1_sig 7:root-x86-64
update.refreshed=ldconfig.service=yes systemd-sysusers.service=yes systemd-update-done.service=yes 
";

    fn failed(checks: Vec<Check>) -> Vec<String> {
        checks
            .into_iter()
            .filter(|c| !c.passed)
            .map(|c| c.name)
            .collect()
    }

    #[test]
    fn secure_boot_needs_the_firmware_on_and_the_kernel_locked_down() {
        let good = parse_report(
            "secure_boot=enabled\nlockdown=none [integrity] confidentiality\n\
             usr_signature=verified by the kernel: certificate sha256 e9f9, signature in /dev/vda4\n",
        );
        assert!(failed(secure_boot_checks(&good)).is_empty());
        let off = parse_report(
            "secure_boot=disabled\nlockdown=[none] integrity confidentiality\n\
             usr_signature=not checked: Secure Boot is off\n",
        );
        assert_eq!(
            failed(secure_boot_checks(&off)),
            [
                "the kernel verified the /usr root hash signature",
                "the firmware enforces Secure Boot",
                "the kernel is locked down"
            ]
        );
        assert_eq!(failed(secure_boot_checks(&BTreeMap::new())).len(), 3);
    }

    #[test]
    fn a_tampered_usr_signature_must_be_refused_by_the_kernel_and_stop_the_boot() {
        let refusal = format!(
            "boxcar-usr-verity: {KERNEL_REFUSED_SIGNATURE} in /dev/vda4: refusing to use /usr"
        );
        let kernel =
            format!("device-mapper: table: 254:0: verity: {KERNEL_REFUSED_ROOT_HASH} (-EINVAL)");
        let none = BTreeMap::new();
        assert!(failed(judge_tamper_usr_signature(
            &none,
            std::slice::from_ref(&refusal),
            std::slice::from_ref(&kernel),
            BootOutcome::Refused
        ))
        .is_empty());
        let missing = "boxcar-usr-verity: Secure Boot is on, and no usr-verity-sig partition signs /usr root hash ab: refusing to use /usr".to_owned();
        assert_eq!(
            failed(judge_tamper_usr_signature(
                &none,
                &[missing],
                &[],
                BootOutcome::Refused
            )),
            [
                "dm-verity refused the tampered signature",
                "the initrd refused to use /usr"
            ]
        );
        let booted = parse_report("multi_user=active\n");
        assert_eq!(
            failed(judge_tamper_usr_signature(
                &booted,
                &[],
                &[],
                BootOutcome::PoweredOff
            )),
            [
                "dm-verity refused the tampered signature",
                "the initrd refused to use /usr",
                "the boot stopped before /usr was used"
            ]
        );
    }

    #[test]
    fn a_tampered_uki_must_be_refused_by_name_before_any_kernel() {
        let uki = "\\EFI\\Linux\\boxcar_1.efi";
        let refusal = format!("Error loading {uki}: Access denied");
        let judge = |refusals: &[String], kernels| {
            failed(judge_tamper_uki(
                uki,
                refusals,
                kernels,
                BootOutcome::Refused,
            ))
        };
        assert!(judge(std::slice::from_ref(&refusal), 0).is_empty());
        assert_eq!(judge(&[], 0), ["the tampered UKI was refused"]);
        let other = "Error loading \\EFI\\other.efi: Access denied".to_owned();
        assert_eq!(judge(&[other], 0), ["the tampered UKI was refused"]);
        assert_eq!(judge(&[refusal], 1), ["no kernel started"]);
    }

    fn failed_update_checks(report: &str) -> Vec<String> {
        failed(update_checks(&parse_report(report), &update_expectation()))
    }

    #[test]
    fn a_bad_config_must_stop_with_its_own_error_and_halt() {
        let errors =
            ["[ 26.5] ignition[372]: CRITICAL : Ignition failed: resource not found".to_owned()];
        let failures =
            |errors: &[String], expected: &str, report: &str, halted: bool, starts: usize| {
                failed(judge_bad_config(
                    &parse_report(report),
                    errors,
                    expected,
                    halted,
                    starts,
                    BootOutcome::EmergencyMode,
                ))
            };
        assert!(failures(&errors, "resource not found", "", true, 1).is_empty());
        assert_eq!(
            failures(&errors, "config is not valid", "", true, 1),
            ["Ignition's error is on the console"]
        );
        assert_eq!(
            failures(
                &errors,
                "resource not found",
                "begin=1\nmulti_user=active\n",
                true,
                1
            ),
            ["the first boot stopped before the system came up"]
        );
        assert_eq!(
            failures(&errors, "resource not found", "", false, 3),
            ["it stopped instead of rebooting"]
        );
    }

    #[test]
    fn containerd_must_load_every_plugin_it_was_not_told_to_skip() {
        let failures = |report: &str| failed(container_runtime_checks(&parse_report(report)));
        let healthy = format!(
            "containerd=active\ncontainerd_plugin_failures=\ndocker_socket=active\n\
             docker_first_answer=26.1.5+dfsg1\ndocker=active\n\
             container_output={CONTAINER_GREETING}\n"
        );
        assert!(failures(&healthy).is_empty());
        // docker's socket answered with an error: docker could not start.
        let refused = healthy.replace(
            "docker_first_answer=26.1.5+dfsg1",
            "docker_first_answer=Cannot connect to the Docker daemon at unix:///run/docker.sock",
        );
        assert_eq!(failures(&refused), ["docker answered its first request"]);
        // Disabling the v1 runtime leaves containerd active, but without
        // its task service: no container could start.
        let crippled = healthy.replace(
            "containerd_plugin_failures=",
            "containerd_plugin_failures=io.containerd.grpc.v1.tasks \
             io.containerd.service.v1.tasks-service",
        );
        assert_eq!(failures(&crippled), ["containerd loaded all its plugins"]);
        // A report that never said is not a pass.
        let silent = healthy.replace("containerd_plugin_failures=\n", "");
        assert_eq!(failures(&silent), ["containerd loaded all its plugins"]);
    }

    #[test]
    fn an_unprovisioned_host_must_refuse_ssh_and_passwords() {
        let failures = |report: &str, ssh: bool| failed(access_checks(&parse_report(report), ssh));
        let closed = "ssh_listeners=0\nssh_connect=bash: connect: Connection refused\n\
                      ssh_sockets=\npassword_accounts=\n";
        assert!(failures(closed, false).is_empty());
        assert_eq!(
            failures(
                "ssh_listeners=1\nssh_connect=connected\nssh_sockets=\npassword_accounts=\n",
                false
            ),
            ["an unprovisioned host exposes no SSH"]
        );
        // A report that never said is not a pass.
        assert_eq!(
            failures("", false),
            [
                "sshd starts only as ssh.service",
                "no account can log in with a password",
                "an unprovisioned host exposes no SSH"
            ]
        );
        // The ssh generator's own sockets are another way in, provisioned
        // or not.
        let generated = closed.replace(
            "ssh_sockets=",
            "ssh_sockets=sshd-unix-local.socket sshd-vsock.socket ",
        );
        assert_eq!(
            failures(&generated, false),
            ["sshd starts only as ssh.service"]
        );
        assert_eq!(
            failures(
                &closed.replace("password_accounts=", "password_accounts=core"),
                false
            ),
            ["no account can log in with a password"]
        );
        assert_eq!(
            failures(closed, true),
            ["sshd listens once an account has a key"]
        );
    }

    #[test]
    fn a_good_update_passes_every_update_check() {
        assert_eq!(failed_update_checks(GOOD_UPDATE), Vec::<String>::new());
    }

    #[test]
    fn an_update_that_did_not_take_is_caught() {
        // sysupdate failed; the second boot ran the old slot and UKI again.
        let report = GOOD_UPDATE
            .replace(
                "update.sysupdate=ok",
                "update.sysupdate=failed (exit 1): no space",
            )
            .replace("boxcar_1.1+3-0.efi", "")
            .replace(
                "update.usr=4:boxcar_1.1 5:boxcar_1.1_verity",
                "update.usr=2:boxcar_1.0 3:boxcar_1.0_verity",
            )
            .replace(
                "update.loader_entry=boxcar_1.1.efi",
                "update.loader_entry=boxcar_1.0.efi",
            )
            .replace(
                "update.ukis=boxcar_1.0.efi boxcar_1.1.efi",
                "update.ukis=boxcar_1.0.efi",
            );
        assert_eq!(
            failed_update_checks(&report),
            [
                "/usr came from the other slot",
                "the boot loader picked the new UKI",
                "the boot was counted good (blessed)",
            ]
        );
    }

    #[test]
    fn an_unblessed_boot_or_a_lost_fallback_is_caught() {
        let unblessed = GOOD_UPDATE.replace(
            "update.ukis=boxcar_1.0.efi boxcar_1.1.efi",
            "update.ukis=boxcar_1.0.efi boxcar_1.1+2-1.efi",
        );
        assert_eq!(
            failed_update_checks(&unblessed),
            ["the boot was counted good (blessed)"]
        );
        let no_fallback =
            GOOD_UPDATE.replace("2:boxcar_1.0 3:boxcar_1.0_verity 4", "2:_empty 3:_empty 4");
        assert_eq!(
            failed_update_checks(&no_fallback),
            ["the older version is kept to fall back to"]
        );
        let unsigned = GOOD_UPDATE.replace("6:boxcar_1.1_sig", "6:_empty");
        assert_eq!(
            failed_update_checks(&unsigned),
            ["the new /usr's signature went to the other slot"]
        );
    }

    #[test]
    fn a_new_usr_booted_with_the_old_caches_is_caught() {
        let refreshed = "the new /usr's first boot refreshed /etc and /var";
        let skipped = GOOD_UPDATE.replace("ldconfig.service=yes", "ldconfig.service=no");
        assert_eq!(failed_update_checks(&skipped), [refreshed]);
        let silent: String = GOOD_UPDATE
            .lines()
            .filter(|line| !line.starts_with("update.refreshed="))
            .map(|line| format!("{line}\n"))
            .collect();
        assert_eq!(failed_update_checks(&silent), [refreshed]);
    }

    /// What the guest reports after a failing update from 1.0 to 1.1 fell
    /// back to 1.0.
    const FALLBACK: &str = "update.before_version=1.0
update.before_usr=2:boxcar_1.0 3:boxcar_1.0_verity
update.sysupdate=ok
update.installed_ukis=boxcar_1.0.efi boxcar_1.1+3-0.efi
update.usr=2:boxcar_1.0 3:boxcar_1.0_verity
update.loader_entry=boxcar_1.0.efi
update.ukis=boxcar_1.0.efi boxcar_1.1+0-3.efi
";

    fn failed_fallback_checks(report: &str, kernel_starts: usize) -> Vec<String> {
        failed(fallback_checks(
            &parse_report(report),
            &update_expectation(),
            kernel_starts,
        ))
    }

    #[test]
    fn a_fallback_after_three_failed_tries_passes() {
        assert_eq!(failed_fallback_checks(FALLBACK, 5), Vec::<String>::new());
    }

    #[test]
    fn a_fallback_too_early_or_not_at_all_is_caught() {
        // One try left unspent: the loader gave up on the new UKI too soon.
        let early = FALLBACK.replace("boxcar_1.1+0-3.efi", "boxcar_1.1+1-2.efi");
        assert_eq!(
            failed_fallback_checks(&early, 4),
            [
                "every try of the new version failed and rebooted",
                "the new UKI's tries are used up"
            ]
        );
        // The tampered version kept running.
        let stuck = FALLBACK
            .replace(
                "update.usr=2:boxcar_1.0 3:boxcar_1.0_verity",
                "update.usr=4:boxcar_1.1 5:boxcar_1.1_verity",
            )
            .replace(
                "update.loader_entry=boxcar_1.0.efi",
                "update.loader_entry=boxcar_1.1.efi",
            );
        assert_eq!(
            failed_fallback_checks(&stuck, 5),
            [
                "the boot loader fell back to the older UKI",
                "/usr came from the older slot"
            ]
        );
    }

    #[test]
    fn a_failed_unit_fails_the_boot_unless_it_is_the_platforms_agent() {
        let agents = ["open-vm-tools.service".to_owned()];
        assert!(failed_units_check("", &agents).passed);
        assert!(failed_units_check("open-vm-tools.service", &agents).passed);
        let check = failed_units_check("systemd-repart.service open-vm-tools.service", &agents);
        assert!(!check.passed);
        assert_eq!(
            check.observed,
            "systemd-repart.service open-vm-tools.service"
        );
    }

    #[test]
    fn a_dma_zone_held_back_fails_the_boot() {
        assert!(dma_zone_check("(0, 0, 0, 0, 0)").passed);
        assert!(!dma_zone_check("(0, 1947, 1947, 1947, 1947)").passed);
        assert!(!dma_zone_check("").passed);
    }

    #[test]
    fn a_wanted_unit_missing_from_the_image_fails_the_boot() {
        assert!(missing_units_check("").passed);
        let check = missing_units_check(" dpkg-db-backup.timer<-timers.target");
        assert!(!check.passed);
        assert_eq!(check.observed, "dpkg-db-backup.timer<-timers.target");
    }

    #[test]
    fn the_update_agent_runs_except_without_a_disk_and_the_boot_is_healthy() {
        let report = |agent: &str, health: &str| {
            BTreeMap::from([
                ("agent_service".to_owned(), agent.to_owned()),
                ("health_service".to_owned(), health.to_owned()),
                (
                    "sysupdate_timers".to_owned(),
                    SYSUPDATE_TIMERS_OFF.to_owned(),
                ),
                ("boot_loader_timer".to_owned(), "enabled".to_owned()),
                (
                    "boot_loader_service".to_owned(),
                    "ConditionResult=yes Result=success".to_owned(),
                ),
            ])
        };
        let healthy = "ActiveState=active Result=success";
        let running = "ActiveState=active ConditionResult=yes Result=success";
        let skipped = "ActiveState=inactive ConditionResult=no Result=success";
        let passed = |r: &BTreeMap<String, String>, diskless| {
            update_agent_checks(r, diskless).iter().all(|c| c.passed)
        };
        assert!(passed(&report(running, healthy), false));
        assert!(!passed(&report(running, healthy), true));
        // One figure of a report changed.
        let with = |mut r: BTreeMap<String, String>, key: &str, value: &str| {
            r.insert(key.to_owned(), value.to_owned());
            r
        };
        let diskless = with(
            report(skipped, healthy),
            "boot_loader_service",
            "ConditionResult=no Result=success",
        );
        assert!(passed(&diskless, true));
        assert!(!passed(
            &report(running, "ActiveState=failed Result=exit-code"),
            false
        ));
        for (key, value) in [
            ("sysupdate_timers", "enabled enabled"),
            ("boot_loader_timer", "disabled"),
            (
                "boot_loader_service",
                "ConditionResult=yes Result=exit-code",
            ),
        ] {
            let altered = with(report(running, healthy), key, value);
            assert!(!passed(&altered, false), "{key}={value}");
        }
    }

    #[test]
    fn report_parsing_skips_noise() {
        let report = parse_report(
            "begin=1\ngarbage\nusr_dm_table=0 1 verity a=b\n=x\nbad key=1\nunit.qemu-guest-agent.service=active\nend=1\n",
        );
        assert_eq!(report.len(), 4);
        assert_eq!(report["unit.qemu-guest-agent.service"], "active");
        assert_eq!(report["usr_dm_table"], "0 1 verity a=b");
    }

    #[test]
    fn verity_table_fields() {
        let t = parse_verity_table(TABLE).unwrap();
        assert_eq!(
            t.root_hash,
            "6fa31b6fc0d1b24208da89aceb6c979f8f9ef8cef37ac556583da9e6bcc7b163"
        );
        assert_eq!(
            (t.data_block_size.as_str(), t.hash_block_size.as_str()),
            ("4096", "4096")
        );
        assert!(parse_verity_table("0 100 linear 254:1 0").is_none());
    }

    #[test]
    fn boot_time_is_split_like_systemd_analyze() {
        let report = parse_report(
            "timestamps=FirmwareTimestampMonotonic=5000000 LoaderTimestampMonotonic=2000000 \
             InitRDTimestampMonotonic=3000000 UserspaceTimestampMonotonic=10000000 FinishTimestampMonotonic=40000000\n\
             multi_user_reached_us=39000000\nanalyze=Startup finished in 3s (firmware) ...\n",
        );
        let t = boot_time(&report).unwrap();
        assert_eq!(t.firmware, Some(3.0));
        assert_eq!(t.loader, Some(2.0));
        assert_eq!(t.kernel, 3.0);
        assert_eq!(t.initrd, Some(7.0));
        assert_eq!(t.userspace, 30.0);
        assert_eq!(t.total, 45.0);
        assert_eq!(t.multi_user_after_userspace, Some(29.0));
        assert!(boot_time(&parse_report("timestamps=FinishTimestampMonotonic=0\n")).is_none());
    }

    #[test]
    fn early_boot_comes_from_the_console_when_the_guest_has_none() {
        let report = parse_report(
            "timestamps=FirmwareTimestampMonotonic=0 LoaderTimestampMonotonic=0 InitRDTimestampMonotonic=6000000 \
             UserspaceTimestampMonotonic=19000000 FinishTimestampMonotonic=44000000\n",
        );
        let mut t = boot_time(&report).unwrap();
        assert_eq!((t.firmware, t.total), (None, 44.0));
        let milestones = [
            Milestone {
                event: LOADER_STARTED.to_owned(),
                seconds: 2.5,
            },
            Milestone {
                event: KERNEL_STARTED.to_owned(),
                seconds: 3.0,
            },
        ];
        add_early_boot_from_console(&mut t, &milestones);
        assert_eq!(
            (t.firmware, t.loader, t.total),
            (Some(2.5), Some(0.5), 47.0)
        );
        assert_eq!(t.early_boot_source.as_deref(), Some("host console"));
    }

    /// The shipped platform table's entries.
    fn shipped_platforms() -> Vec<Platform> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(crate::platform::TABLE_FILE);
        crate::platform::PlatformTable::load(&path)
            .unwrap()
            .platforms
    }

    fn shipped_platform(id: &str) -> Platform {
        let id: crate::platform::PlatformId = id.parse().unwrap();
        shipped_platforms()
            .into_iter()
            .find(|p| p.id == id)
            .unwrap()
    }

    /// open-vm-tools, started under its platform condition and failed
    /// because vmware-checkvm says this is not VMware.
    const STARTED_OUTSIDE_VMWARE: &str = "unit.open-vm-tools.service=failed\n\
        unitinfo.open-vm-tools.service=ConditionResult=yes ExecMainStartTimestampMonotonic=30200000 \
        ExecMainStatus=1\nvmware_checkvm=Error: vmware-checkvm must be run inside a virtual machine on a \
        VMware hypervisor product.\n";

    #[test]
    fn agents_must_be_active_unless_bound_to_a_hypervisor_qemu_cannot_be() {
        let (qemu, vmware, aws) = (
            shipped_platform("qemu"),
            shipped_platform("vmware"),
            shipped_platform("aws"),
        );
        let active = parse_report("unit.qemu-guest-agent.service=active\n");
        assert!(agent_verdict(&active, &qemu, "qemu-guest-agent.service").0);
        let never_started = parse_report(
            "unit.open-vm-tools.service=inactive\nunitinfo.open-vm-tools.service=ConditionResult=no \
             ExecMainStartTimestampMonotonic=0 ExecMainStatus=0\n",
        );
        assert!(!agent_verdict(&never_started, &vmware, "open-vm-tools.service").0);
        let started_outside_vmware = parse_report(STARTED_OUTSIDE_VMWARE);
        let (ok, seen) = agent_verdict(&started_outside_vmware, &vmware, "open-vm-tools.service");
        assert!(ok, "{seen}");
        assert!(seen.contains("status 1"), "{seen}");
        assert_eq!(
            expected_agent_state(&vmware, "open-vm-tools.service"),
            "open-vm-tools.service active, or under qemu started where its platform condition holds"
        );
        let failed_agent = parse_report(
            "unit.boxcar-ec2-hostname.service=failed\nunitinfo.boxcar-ec2-hostname.service=ConditionResult=yes \
             ExecMainStartTimestampMonotonic=30200000 ExecMainStatus=1\n",
        );
        assert!(!agent_verdict(&failed_agent, &aws, "boxcar-ec2-hostname.service").0);
        assert_eq!(
            expected_agent_state(&aws, "boxcar-ec2-hostname.service"),
            "boxcar-ec2-hostname.service active"
        );
    }

    #[test]
    fn the_ebs_name_helper_must_read_the_disk_and_name_nothing_under_qemu() {
        let refused = "/dev/nvme0n1: no EBS device name in its NVMe identify data exit=1";
        assert!(ebs_name_check("4096", refused).passed);
        // What nvme-cli says besides the data does not count.
        assert!(ebs_name_check("4096 a notice on stderr", refused).passed);
        // nvme-cli could not read the controller.
        assert!(!ebs_name_check("0 identify controller: Permission denied", refused).passed);
        // A name where there is none, or a helper that is missing.
        assert!(!ebs_name_check("4096", "sdf exit=0").passed);
        let missing = "sh: 1: /usr/lib/udev/boxcar-ebs-device-name: not found exit=127";
        assert!(!ebs_name_check("4096", missing).passed);
    }

    #[test]
    fn udev_must_accept_the_images_rules() {
        let accepted = "1 udev rules files have been checked. Success: 1 Fail: 0 exit=0";
        assert!(udev_rules_check(accepted).passed);
        let refused =
            "/usr/lib/udev/rules.d/70-boxcar-ebs-nvme.rules:12 Invalid key/value pair, ignoring. \
                       1 udev rules files have been checked. Success: 0 Fail: 1 exit=1";
        assert!(!udev_rules_check(refused).passed);
        assert!(!udev_rules_check("").passed);
    }

    #[test]
    fn only_the_table_makes_an_agent_hypervisor_bound() {
        let report = parse_report(STARTED_OUTSIDE_VMWARE);
        // The same facts, but the table does not list the agent as bound to
        // its hypervisor: a failed agent is a failed agent.
        let mut unbound = shipped_platform("vmware");
        unbound.hypervisor_bound_agents.clear();
        assert!(!agent_verdict(&report, &unbound, "open-vm-tools.service").0);
        // Bound, but the check printed something else: not proven.
        let vmware = shipped_platform("vmware");
        let other = parse_report(&STARTED_OUTSIDE_VMWARE.replace(
            "must be run inside a virtual machine on a \
        VMware hypervisor product.",
            "command not found",
        ));
        assert!(!agent_verdict(&other, &vmware, "open-vm-tools.service").0);
        // A check of another name, reported under its own key.
        let mut renamed = vmware.clone();
        renamed.hypervisor_bound_agents[0].check = "vm-probe".into();
        renamed.hypervisor_bound_agents[0].check_outside = "not here".into();
        let probed = parse_report(&format!(
            "{STARTED_OUTSIDE_VMWARE}vm_probe=qemu is not here\n"
        ));
        assert!(agent_verdict(&probed, &renamed, "open-vm-tools.service").0);
        assert!(!agent_verdict(&report, &renamed, "open-vm-tools.service").0);
    }

    #[test]
    fn tamper_is_caught_by_a_console_error_or_corrupt_status() {
        let none = BTreeMap::new();
        let errors = vec!["device-mapper: verity: 254:0: data block 0 is corrupted".to_owned()];
        let checks = judge_tamper(&none, &errors, BootOutcome::EmergencyMode);
        assert!(checks.iter().all(|c| c.passed), "{checks:?}");
        let checks = judge_tamper(&none, &[], BootOutcome::EmergencyMode);
        assert!(!checks[0].passed);
        let booted = parse_report("multi_user=active\nusr_dm_status=0 1 verity V\n");
        let checks = judge_tamper(&booted, &[], BootOutcome::PoweredOff);
        assert!(checks.iter().all(|c| !c.passed), "{checks:?}");
    }
}
