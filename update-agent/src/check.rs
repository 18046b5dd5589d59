//! One check of the host's channel, start to end: the signed chain
//! (keyring, index, channel, release.json) through the client library with
//! the serials this host has accepted; whether the release is newer, not
//! known bad, and the host's wave has come; then download, verify, stage,
//! check and install. The staging area is emptied whatever happens (a
//! download interrupted by a failure that may pass is kept, to resume).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use boxcar_client::chain::Selector;
use boxcar_client::layout::SafeName;
use boxcar_client::retry::RetryPolicy;
use boxcar_client::rollback::SerialState;
use boxcar_client::{Client, ErrorKind, NetworkSettings, Observer};
use boxcar_signing::documents::{ExpirationEnforcement, ReleaseDocument, UpdatePayload};
use boxcar_signing::TrustedKeys;
use serde::Serialize;
use time::OffsetDateTime;

use crate::config::Config;
use crate::identity::Identity;
use crate::paths::Paths;
use crate::rollout::{wave_status, WaveStatus};
use crate::state::{Available, Pending, Phase, State};
use crate::{host, install, staging};

/// What a check came to.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// No store is configured.
    NotFollowing {
        reason: String,
    },
    UpToDate {
        version: String,
    },
    /// The channel offers a version that failed to boot here before.
    SkippedBad {
        version: String,
        reason: String,
    },
    /// The host's wave has not come, or the rollout is paused.
    Waiting {
        version: String,
        wave: WaveStatus,
    },
    /// Installed before, waiting for its reboot.
    AlreadyInstalled {
        version: String,
    },
    Installed(Installed),
}

/// An update installed into the idle slot, and what it took.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Installed {
    pub version: String,
    pub downloaded_bytes: u64,
    pub download_seconds: f64,
    pub verify_seconds: f64,
    pub install_seconds: f64,
}

/// Everything a check needs.
pub struct Check<'a> {
    pub paths: &'a Paths,
    pub config: &'a Config,
    pub identity: &'a Identity,
    /// Ignore the rollout's waves and pause (`check --now`).
    pub ignore_waves: bool,
    pub now: OffsetDateTime,
}

impl Check<'_> {
    /// Runs the check, keeping `state` up to date (and saved) as it goes.
    pub fn run(&self, state: &mut State) -> Result<Outcome> {
        if self.config.store.url.is_empty() {
            return Ok(Outcome::NotFollowing {
                reason: format!(
                    "no store is configured (store.url in {})",
                    self.paths.host_config().display()
                ),
            });
        }
        let running = host::running_version(self.paths)?;
        let client = self.client()?;
        let (release, wave) = self.resolve(&client, state)?;
        let version = release.version.clone();
        if let Some(pending) = &state.pending {
            if pending.version == version {
                return Ok(Outcome::AlreadyInstalled { version });
            }
        }
        if !boxcar_client::version::compare(&version, &running).is_gt() {
            return Ok(Outcome::UpToDate { version: running });
        }
        if let Some(bad) = state.is_bad(&version) {
            return Ok(Outcome::SkippedBad {
                version,
                reason: bad.reason.clone(),
            });
        }
        if !self.ignore_waves && !matches!(wave, WaveStatus::Open { .. }) {
            return Ok(Outcome::Waiting { version, wave });
        }
        let payload = payload_of(&release)?;
        let installed = self.update(&client, state, &release, payload, &running);
        // Whatever happened, an update still pending (this one, or one
        // installed earlier that this failure left in place) waits for its
        // reboot.
        state.phase = if state.pending.is_some() {
            Phase::RebootPending
        } else {
            Phase::Idle
        };
        state.save(self.paths)?;
        installed.map(Outcome::Installed)
    }

    fn client(&self) -> Result<Client> {
        let network = NetworkSettings::with_read_timeout(
            Duration::from_secs(self.config.agent.read_timeout_seconds.max(1)),
            RetryPolicy {
                retries: 2,
                first_wait: Duration::from_secs(2),
                max_wait: Duration::from_secs(10),
            },
        );
        Ok(Client::open(
            &self.config.store.url,
            network,
            Arc::new(JournalObserver),
        )?)
    }

    /// The channel's release, through the signed chain, and where this
    /// host stands in its rollout; both are recorded as what is available.
    fn resolve(&self, client: &Client, state: &mut State) -> Result<(ReleaseDocument, WaveStatus)> {
        let pinned = trusted_keys(self.paths, self.config)?;
        let mut serials = SerialState::load(&self.paths.serials_file())?;
        let trust = client.trust(
            &pinned,
            ExpirationEnforcement::Enforce,
            self.now,
            Some(&mut serials),
        )?;
        let channel = SafeName::new("channel", &self.config.store.channel)?;
        let resolved = client.resolve(
            &trust,
            &Selector::Channel {
                name: channel,
                version: None,
            },
            &mut serials,
            self.now,
        )?;
        let release = resolved.release.document;
        let rollout = resolved
            .channel_document
            .as_ref()
            .and_then(|c| c.rollout.as_ref());
        let wave = wave_status(rollout, self.identity.position, self.now)?;
        state.available = Some(Available {
            version: release.version.clone(),
            channel_serial: resolved.channel.map_or(0, |(_, serial)| serial),
            wave: wave.clone(),
            download_bytes: release
                .update
                .as_ref()
                .map_or(0, UpdatePayload::download_size),
        });
        Ok((release, wave))
    }

    /// Downloads, verifies, checks and installs; the staging area is
    /// emptied afterwards whatever happened.
    fn update(
        &self,
        client: &Client,
        state: &mut State,
        release: &ReleaseDocument,
        payload: &UpdatePayload,
        running: &str,
    ) -> Result<Installed> {
        let version = SafeName::new("version", &release.version)?;
        state.phase = Phase::Downloading;
        state.save(self.paths)?;
        eprintln!(
            "downloading {version}: {} bytes from {}",
            payload.download_size(),
            client.location("")
        );
        let staged = match staging::stage(client, self.paths, &version, payload) {
            Ok(staged) => staged,
            Err(error) => {
                let may_pass = error
                    .downcast_ref::<boxcar_client::Error>()
                    .is_some_and(|e| e.kind() == ErrorKind::RetryLater);
                staging::clean(self.paths, may_pass)?;
                return Err(error.context(format!("downloading {version}")));
            }
        };
        eprintln!(
            "checking the staged {version} (downloaded in {:.1} s, decompressed in {:.1} s)",
            staged.download_time.as_secs_f64(),
            staged.decompress_time.as_secs_f64()
        );
        let started = Instant::now();
        let secure_boot = crate::host::secure_boot_on(self.paths);
        let checked = install::check_staged(&staged, release, secure_boot);
        let verify_seconds = started.elapsed().as_secs_f64();
        if let Err(error) = checked {
            staging::clean(self.paths, false)?;
            return Err(error.context(format!("checking the staged {version}")));
        }
        // Up to here nothing was written outside the downloads and the
        // staging area, so a failure above leaves an update installed
        // earlier (`state.pending`) in its slot, still waiting for its
        // reboot. systemd-sysupdate writes into the idle slot, which is
        // where that update is (hash tree, /usr, signature, then the UKI):
        // from here it is gone, even if this process dies half-way, so no
        // later round reboots into a slot that may be half overwritten.
        let overwritten = forget_pending(self.paths, state, &version);
        state.phase = Phase::Installing;
        state.save(self.paths)?;
        eprintln!("installing {version} with systemd-sysupdate (checked in {verify_seconds:.1} s)");
        let started = Instant::now();
        let installed = install::install(self.paths, version.as_str());
        let cleaned = staging::clean(self.paths, false);
        if let Err(error) = installed {
            let error = error.context(format!("installing {version}"));
            return Err(match overwritten {
                Some(earlier) => error.context(format!(
                    "{earlier} no longer waits for its reboot (installing {version} may have overwritten part of its slot)"
                )),
                None => error,
            });
        }
        // The idle slot holds this version now: whatever fails below, a
        // reboot boots it.
        state.pending = Some(Pending {
            version: version.to_string(),
            from_version: running.to_owned(),
            installed_at: boxcar_signing::documents::format_time(self.now),
            installed_in_boot: host::boot_id().unwrap_or_default(),
            lock_taken: false,
        });
        cleaned?;
        if let Err(error) = install::forget_update_done(self.paths) {
            eprintln!(
                "warning: {error:#}: the first boot of {version} may not refresh /etc and /var"
            );
        }
        write_reboot_required(self.paths, version.as_str())?;
        Ok(Installed {
            version: version.to_string(),
            downloaded_bytes: staged.downloaded_bytes,
            download_seconds: (staged.download_time + staged.decompress_time).as_secs_f64(),
            verify_seconds,
            install_seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// The release's update, checked to be one for this very release: every
/// part is installed under a name of its version (a part of another
/// release would make systemd-sysupdate install that one).
fn payload_of(release: &ReleaseDocument) -> Result<&UpdatePayload> {
    let payload = release.update.as_ref().with_context(|| {
        format!(
            "release {} carries no update payload (published before updates were): nodes cannot update to it",
            release.version
        )
    })?;
    let prefix = format!("boxcar_{}", release.version);
    for file in &payload.files {
        let rest = file.installed_name.strip_prefix(&prefix);
        if !rest.is_some_and(|r| r.starts_with('_') || r.starts_with('.')) {
            bail!(
                "release {} lists update part {} of another version",
                release.version,
                file.installed_name
            );
        }
    }
    Ok(payload)
}

/// The store keys this host trusts: those pinned in the image, those the
/// host added, and any named in the settings.
pub fn trusted_keys(paths: &Paths, config: &Config) -> Result<TrustedKeys> {
    let mut files = boxcar_signing::keys::public_key_files(&paths.pinned_keys());
    files.extend(boxcar_signing::keys::public_key_files(&paths.host_keys()));
    files.extend(config.store.keys.iter().cloned());
    let mut trusted = TrustedKeys::default();
    for file in &files {
        trusted.add(
            boxcar_signing::PublicKey::load(file)
                .with_context(|| format!("loading trusted key {}", file.display()))?,
        );
    }
    if trusted.is_empty() {
        bail!(
            "no store key is trusted: the image pins none in {} and the host adds none in {}",
            paths.pinned_keys().display(),
            paths.host_keys().display()
        );
    }
    Ok(trusted)
}

/// Before systemd-sysupdate installs `version` into the idle slot: an
/// update installed there earlier no longer waits for its reboot (said in
/// the history); returns its version.
fn forget_pending(paths: &Paths, state: &mut State, version: &SafeName) -> Option<String> {
    let earlier = state.pending.take()?;
    if let Err(removing) = remove_reboot_required(paths) {
        eprintln!("warning: {removing:#}");
    }
    state.record(format!(
        "installing {version} over {}, which was waiting for its reboot",
        earlier.version
    ));
    Some(earlier.version)
}

/// No update waits for a reboot any more.
fn remove_reboot_required(paths: &Paths) -> Result<()> {
    let path = paths.reboot_required();
    match std::fs::remove_file(&path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(error).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// `/run/reboot-required`, as Debian and Ubuntu write it (kured watches it).
fn write_reboot_required(paths: &Paths, version: &str) -> Result<()> {
    let path = paths.reboot_required();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    boxcar_client::files::replace(
        &path,
        format!("*** System restart required: Boxcar Linux {version} is installed ***\n")
            .as_bytes(),
    )?;
    Ok(())
}

/// Retries and servers' quirks go to the journal, one line each.
struct JournalObserver;

impl Observer for JournalObserver {
    fn notice(&self, message: &str) {
        eprintln!("{message}");
    }
}
