//! First-boot provisioning in a boot test: the Ignition config the test
//! hands a platform's machine, delivered the way the platform table says
//! that platform delivers one, and what the host then checks by logging in
//! with the stock OpenSSH client through a port forwarded on loopback.
//!
//! The config does what an operator's first config does: an SSH key for
//! `core`, a file, the hostname, and a unit (enabled) that runs a container
//! from a locally imported image; and the rest of what Ignition applies: a
//! new user in a new group, a directory, a link, a drop-in and a masked unit. After the first boot the host logs in,
//! checks all of it (and that `sudo` works for core, and that a password
//! login is refused), reboots the machine, and checks again: Ignition must
//! not have run a second time, and everything it did must still be there.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use crate::hosttools::HostTools;
use crate::process::Step;
use crate::records::evidence::Check;

/// The name of the unit the config enables.
pub const UNIT: &str = "boxcar-hello.service";
/// The container that unit runs.
pub const CONTAINER: &str = "boxcar-hello";
/// A container the first login starts with a restart policy, and nothing
/// else: docker must start at the next boot to bring it back
/// (boxcar-docker-at-boot.service), where it would otherwise wait for its
/// socket's first use.
pub const KEPT_CONTAINER: &str = "boxcar-kept";
/// The file the config writes, and what it holds.
pub const FILE: &str = "/etc/boxcar-test/hello";
pub const FILE_CONTENT: &str = "written by Ignition";
/// The rest of the config: a user and group it creates, a directory, a
/// link, a drop-in on UNIT setting an environment variable, a masked unit.
const NEW_USER: &str = "deployer";
const NEW_GROUP: &str = "boxcar-ops";
const DIRECTORY: &str = "/etc/boxcar-test/dir";
const LINK: &str = "/etc/boxcar-test/link";
const DROP_IN_ENVIRONMENT: &str = "BOXCAR_GREETING=from-a-drop-in";
const MASKED_UNIT: &str = "boxcar-masked.service";

/// A machine the test provisions.
pub struct Provisioning {
    /// The test's SSH key pair (private key; the public key is beside it).
    pub key: PathBuf,
    /// The Ignition config (JSON).
    pub config: PathBuf,
    /// The host port forwarded to the guest's port 22.
    pub ssh_port: u16,
    /// The hostname the config sets.
    pub hostname: String,
}

/// Makes a key pair and the config for `platform_id`, in `work`.
pub fn prepare(tools: &HostTools, work: &Path, platform_id: &str) -> Result<Provisioning> {
    let key = work.join("id_ed25519");
    Step::new("making the test's SSH key", tools.path("ssh-keygen"))
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "boxcar-test", "-f"])
        .arg(&key)
        .run()?;
    let public = std::fs::read_to_string(key.with_extension("pub"))?;
    let hostname = format!("boxcar-{platform_id}-provisioned");
    let config = work.join("config.ign");
    std::fs::write(&config, config_json(public.trim(), &hostname).to_string())?;
    Step::new(
        "checking the test's Ignition config",
        tools.path("ignition-validate"),
    )
    .arg(&config)
    .run()?;
    Ok(Provisioning {
        key,
        config,
        ssh_port: free_port()?,
        hostname,
    })
}

/// The config: Ignition spec 3.3.0, what Butane's flatcar 1.0.0 variant
/// produces.
pub fn config_json(public_key: &str, hostname: &str) -> serde_json::Value {
    let unit = format!(
        "[Unit]\n\
         Description=A container from a locally imported image, enabled by Ignition\n\
         Requires=docker.service\n\
         After=docker.service\n\n\
         [Service]\n\
         ExecStartPre=/bin/sh -c 'docker image inspect boxcar-test/hello >/dev/null 2>&1 || \
         tar -xOf /dev/disk/by-id/virtio-boxcar-testdata rootfs.tar | docker import - boxcar-test/hello'\n\
         ExecStart=/usr/bin/docker run --rm --name {CONTAINER} --network none boxcar-test/hello /bin/busybox sleep 1000000\n\
         ExecStop=/usr/bin/docker stop {CONTAINER}\n\n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    );
    json!({
        "ignition": { "version": "3.3.0" },
        "passwd": {
            "users": [
                { "name": "core", "sshAuthorizedKeys": [public_key] },
                { "name": NEW_USER, "groups": [NEW_GROUP, "docker"] }
            ],
            "groups": [{ "name": NEW_GROUP }]
        },
        "storage": {
            "files": [
                {
                    "path": "/etc/hostname",
                    "mode": 420,
                    "overwrite": true,
                    "contents": { "source": format!("data:,{hostname}") }
                },
                {
                    "path": FILE,
                    "mode": 420,
                    "contents": { "source": format!("data:,{}", FILE_CONTENT.replace(' ', "%20")) }
                }
            ],
            "directories": [{ "path": DIRECTORY, "mode": 0o750 }],
            "links": [{ "path": LINK, "target": FILE }]
        },
        "systemd": {
            "units": [
                {
                    "name": UNIT,
                    "enabled": true,
                    "contents": unit,
                    "dropins": [{
                        "name": "10-greeting.conf",
                        "contents": format!("[Service]\nEnvironment={DROP_IN_ENVIRONMENT}\n")
                    }]
                },
                { "name": MASKED_UNIT, "mask": true },
                // docker at every boot, not on its socket's first use: the
                // operator's choice wins over the image's preset.
                { "name": "docker.service", "enabled": true }
            ]
        }
    })
}

/// A port on loopback that nothing listens on now.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// What one login found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Login {
    pub file: String,
    pub hostname: String,
    pub unit: String,
    pub container: String,
    /// Whether [`KEPT_CONTAINER`] ran when the login looked (the login
    /// starts it once the unit's image is there).
    pub kept_container: String,
    /// boxcar-docker-at-boot.service's condition on this boot: "yes" once
    /// docker has a container to bring back.
    pub docker_at_boot: String,
    pub sudo: String,
    /// The stamp the first boot left (`/var/lib/boxcar/provisioned`).
    pub provisioned: String,
    /// The ssh client's last words when it tried a password instead.
    pub password_attempt: String,
    /// What root's login with the key from the `ssh.authorized_keys.root`
    /// systemd credential printed.
    pub root_by_credential: String,
    /// The new user's groups, the directory's mode, the link's target,
    /// the unit's environment, the masked unit's state.
    pub user_groups: String,
    pub directory_mode: String,
    pub link_target: String,
    pub unit_environment: String,
    pub masked: String,
    /// Whether docker.service is enabled (the config enables it).
    pub docker_enabled: String,
}

/// The command the host runs over SSH, printing one `key=value` per line.
const REMOTE: &str = "printf 'file=%s\\n' \"$(cat /etc/boxcar-test/hello 2>&1)\"; \
    printf 'hostname=%s\\n' \"$(hostname)\"; \
    printf 'unit=%s\\n' \"$(systemctl is-active boxcar-hello.service)\"; \
    printf 'container=%s\\n' \"$(docker ps --filter name=boxcar-hello --format '{{.Names}}' 2>&1)\"; \
    kept=$(docker ps --filter name=boxcar-kept --format '{{.Names}}' 2>&1); \
    printf 'kept_container=%s\\n' \"$kept\"; \
    printf 'docker_at_boot=%s\\n' \"$(systemctl show -P ConditionResult boxcar-docker-at-boot.service)\"; \
    [ -n \"$kept\" ] || ! systemctl -q is-active boxcar-hello.service || \
    docker run -d --restart always --name boxcar-kept --network none boxcar-test/hello \
    /bin/busybox sleep 1000000 >/dev/null 2>&1; \
    printf 'sudo=%s\\n' \"$(sudo -n true 2>&1 && echo ok)\"; \
    printf 'provisioned=%s\\n' \"$(tr '\\n' ' ' </var/lib/boxcar/provisioned 2>&1)\"; \
    printf 'user_groups=%s\\n' \"$(id -nG deployer 2>&1)\"; \
    printf 'directory_mode=%s\\n' \"$(stat -c %a /etc/boxcar-test/dir 2>&1)\"; \
    printf 'link_target=%s\\n' \"$(readlink /etc/boxcar-test/link 2>&1)\"; \
    printf 'unit_environment=%s\\n' \"$(systemctl show -P Environment boxcar-hello.service)\"; \
    printf 'masked=%s\\n' \"$(systemctl is-enabled boxcar-masked.service 2>&1)\"; \
    printf 'docker_enabled=%s\\n' \"$(systemctl is-enabled docker.service 2>&1)\"";

/// The stock OpenSSH client, as `core`, with the test's key.
fn ssh(tools: &HostTools, provisioning: &Provisioning) -> Step {
    ssh_as(tools, provisioning, "core")
}

/// The SMBIOS string that hands root the test's key as a systemd credential
/// (`ssh.authorized_keys.root`, which systemd's tmpfiles write to
/// /root/.ssh/authorized_keys): provisioning without Ignition.
pub fn root_key_credential(provisioning: &Provisioning) -> Result<String> {
    let public = std::fs::read_to_string(provisioning.key.with_extension("pub"))?;
    Ok(format!(
        "io.systemd.credential:ssh.authorized_keys.root={}",
        public.trim()
    ))
}

/// The stock OpenSSH client, as `user`, with the test's key.
fn ssh_as(tools: &HostTools, provisioning: &Provisioning, user: &str) -> Step {
    Step::new("logging in with OpenSSH", tools.path("ssh"))
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=20",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
        ])
        .arg(&provisioning.key)
        .args(["-p", &provisioning.ssh_port.to_string()])
        .arg(format!("{user}@127.0.0.1"))
}

/// Logs in and reads what provisioning left. The unit's container may
/// still be starting: tries for up to two minutes until it runs.
pub fn login(tools: &HostTools, provisioning: &Provisioning) -> Result<Login> {
    let started = Instant::now();
    let mut found = loop {
        let text = ssh(tools, provisioning).arg(REMOTE).output_text();
        let found = match text {
            Ok(text) => parse(&text),
            Err(_) if started.elapsed() < Duration::from_secs(120) => {
                std::thread::sleep(Duration::from_secs(3));
                continue;
            }
            Err(e) => return Err(e).context("logging in to the guest over SSH"),
        };
        let settled = found.unit == "active" && found.container == CONTAINER;
        if settled || started.elapsed() > Duration::from_secs(120) {
            break found;
        }
        std::thread::sleep(Duration::from_secs(3));
    };
    let attempt = Step::new("trying a password login", tools.path("ssh"))
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
            "-o",
            "NumberOfPasswordPrompts=0",
            "-p",
            &provisioning.ssh_port.to_string(),
            "core@127.0.0.1",
            "true",
        ])
        .run();
    found.root_by_credential = match ssh_as(tools, provisioning, "root")
        .arg("id -un")
        .output_text()
    {
        Ok(text) => text.trim().to_owned(),
        Err(e) => e.to_string(),
    };
    found.password_attempt = match attempt {
        Ok(()) => "logged in without a key".to_owned(),
        Err(e) => e.to_string(),
    };
    Ok(found)
}

fn parse(text: &str) -> Login {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    Login {
        file: get("file"),
        hostname: get("hostname"),
        unit: get("unit"),
        container: get("container"),
        kept_container: get("kept_container"),
        docker_at_boot: get("docker_at_boot"),
        sudo: get("sudo"),
        provisioned: get("provisioned"),
        password_attempt: String::new(),
        root_by_credential: String::new(),
        user_groups: get("user_groups"),
        directory_mode: get("directory_mode"),
        link_target: get("link_target"),
        unit_environment: get("unit_environment"),
        masked: get("masked"),
        docker_enabled: get("docker_enabled"),
    }
}

/// Asks the guest, over SSH, to reboot or power off.
pub fn send(tools: &HostTools, provisioning: &Provisioning, command: &str) -> Result<()> {
    // The connection drops as the machine goes down; that is success.
    let _ = ssh(tools, provisioning)
        .arg(format!("sudo systemctl --no-block {command}"))
        .run();
    Ok(())
}

fn check(name: &str, passed: bool, expected: &str, observed: String) -> Check {
    Check {
        name: name.to_owned(),
        passed,
        expected: expected.to_owned(),
        observed,
    }
}

/// Judges a login after the first boot.
pub fn judge_first(provisioning: &Provisioning, login: &Login) -> Vec<Check> {
    vec![
        check(
            "core logs in over SSH with the configured key",
            !login.hostname.is_empty(),
            "a shell as core",
            if login.hostname.is_empty() {
                "no login".to_owned()
            } else {
                format!("logged in to {}", login.hostname)
            },
        ),
        check(
            "Ignition wrote the configured file",
            login.file == FILE_CONTENT,
            FILE_CONTENT,
            login.file.clone(),
        ),
        check(
            "the hostname is the configured one",
            login.hostname == provisioning.hostname,
            &provisioning.hostname,
            login.hostname.clone(),
        ),
        check(
            "the configured unit runs its container",
            login.unit == "active" && login.container == CONTAINER,
            &format!("{UNIT} active, container {CONTAINER} running"),
            format!("{}, containers: {}", login.unit, login.container),
        ),
        check(
            "Ignition made the new user and group, the directory, the link, the drop-in and the mask, and enabled docker",
            made_the_rest(login),
            &format!(
                "{NEW_USER} in {NEW_GROUP} and docker; {DIRECTORY} mode 750; {LINK} -> {FILE}; \
                 {UNIT} has {DROP_IN_ENVIRONMENT}; {MASKED_UNIT} masked; docker.service enabled"
            ),
            format!(
                "groups {:?}; mode {:?}; link {:?}; environment {:?}; {:?}; docker.service {:?}",
                login.user_groups,
                login.directory_mode,
                login.link_target,
                login.unit_environment,
                login.masked,
                login.docker_enabled
            ),
        ),
        check(
            "core may use sudo without a password",
            login.sudo == "ok",
            "sudo -n true succeeds",
            login.sudo.clone(),
        ),
        check(
            "root logs in with the key from a systemd credential",
            login.root_by_credential == "root",
            "root",
            login.root_by_credential.clone(),
        ),
        check(
            "a password login is refused",
            login
                .password_attempt
                .contains("Permission denied (publickey)"),
            "Permission denied (publickey)",
            login.password_attempt.clone(),
        ),
    ]
}

fn made_the_rest(login: &Login) -> bool {
    let groups: Vec<&str> = login.user_groups.split_whitespace().collect();
    groups.contains(&NEW_GROUP)
        && groups.contains(&"docker")
        && login.directory_mode == "750"
        && login.link_target == FILE
        && login
            .unit_environment
            .split_whitespace()
            .any(|e| e == DROP_IN_ENVIRONMENT)
        && login.masked == "masked"
        && login.docker_enabled == "enabled"
}

/// Judges the login after the reboot against the first one.
pub fn judge_second(first: &Login, second: &Login, ignition_lines: &str) -> Vec<Check> {
    vec![
        check(
            "Ignition did not run again",
            ignition_lines == "0"
                && !second.provisioned.is_empty()
                && second.provisioned == first.provisioned,
            "no Ignition messages this boot, the first boot's stamp unchanged",
            format!(
                "{ignition_lines} Ignition messages; stamp {:?} (first boot: {:?})",
                second.provisioned, first.provisioned
            ),
        ),
        check(
            "everything provisioned persisted across the reboot",
            second.file == first.file
                && second.hostname == first.hostname
                && second.unit == "active"
                && second.container == CONTAINER
                && second.sudo == "ok"
                && made_the_rest(second),
            "the same file, hostname, running unit, sudo, user, directory, link, drop-in and mask",
            format!(
                "file {:?}, hostname {}, unit {}, container {}, sudo {}",
                second.file, second.hostname, second.unit, second.container, second.sudo
            ),
        ),
        check(
            "docker started at boot to bring back a container with a restart policy",
            first.docker_at_boot == "no"
                && second.docker_at_boot == "yes"
                && second.kept_container == KEPT_CONTAINER,
            &format!(
                "boxcar-docker-at-boot.service skipped on the first boot and run on the second; \
                 {KEPT_CONTAINER} running"
            ),
            format!(
                "condition {:?} then {:?}; containers: {:?}",
                first.docker_at_boot, second.docker_at_boot, second.kept_container
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test's config is one Ignition 2.14 accepts (ignition-validate
    /// comes with the host setup).
    #[test]
    fn the_config_is_valid_for_ignition() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.ign");
        let config = config_json("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0x test", "h");
        std::fs::write(&file, config.to_string()).unwrap();
        let status = std::process::Command::new("ignition-validate")
            .arg(&file)
            .status()
            .expect("ignition-validate (ci/setup-host installs it)");
        assert!(status.success());
        assert_eq!(config["ignition"]["version"], "3.3.0");
    }

    #[test]
    fn everything_else_the_config_makes_is_checked() {
        let made = Login {
            user_groups: format!("{NEW_USER} {NEW_GROUP} docker"),
            directory_mode: "750".into(),
            link_target: FILE.into(),
            unit_environment: DROP_IN_ENVIRONMENT.into(),
            masked: "masked".into(),
            docker_enabled: "enabled".into(),
            ..Login::default()
        };
        assert!(made_the_rest(&made));
        for broken in [
            Login {
                user_groups: "id: 'deployer': no such user".into(),
                ..made.clone()
            },
            Login {
                directory_mode: "755".into(),
                ..made.clone()
            },
            Login {
                masked: "static".into(),
                ..made.clone()
            },
            Login {
                unit_environment: String::new(),
                ..made.clone()
            },
            Login {
                docker_enabled: "disabled".into(),
                ..made.clone()
            },
        ] {
            assert!(!made_the_rest(&broken), "{broken:?}");
        }
    }
}
