//! The writers' verbs: `boxcar keys`, `boxcar publish`, `boxcar promote`,
//! `boxcar renew` and `boxcar repair`.

use anyhow::{Context, Result};
use boxcar_signing::{PublicKey, Sign};
use serde::Serialize;
use time::OffsetDateTime;

use crate::channel::Channels;
use crate::cmdline::{
    GlobalArgs, KeysArgs, KeysCommand, PromoteArgs, PublishArgs, RenewArgs, RepairArgs, RoleArg,
};
use crate::defaults;
use crate::progress::Progress;
use crate::project::Project;
use crate::release::documents::{Downgrade, Writer};
use crate::release::keyring::{self, Change, KeyRole};
use crate::release::{
    backend, keys, promote as promotion, publish as publishing, renew as renewal,
};
use crate::units::human_bytes;

/// How many times a writer reads the store again and retries when another
/// writer changed a document it was replacing.
const CONFLICT_ATTEMPTS: u32 = 6;

/// Runs `operation` again (it reads the store afresh each time) while it
/// fails because another writer replaced a document first.
fn retrying_conflicts<T>(progress: &Progress, operation: impl FnMut() -> Result<T>) -> Result<T> {
    backend::retrying_conflicts(
        CONFLICT_ATTEMPTS,
        std::time::Duration::from_millis(100),
        &|e, attempt| {
            progress.note(&format!(
                "{e:#}; reading the store again (attempt {attempt} of {CONFLICT_ATTEMPTS})"
            ))
        },
        operation,
    )
}

/// Opens a store for writing and takes the writers' lock, reporting what
/// taking it repaired.
fn locked(
    global: &GlobalArgs,
    store: &str,
    progress: &Progress,
) -> Result<(Box<dyn backend::StoreBackend>, backend::WriterLock)> {
    let store = backend::open(store, &global.s3_options())?;
    let lock = store.lock(&|waiting| progress.note(waiting))?;
    for line in &lock.repaired {
        progress.note(line);
    }
    Ok((store, lock))
}

pub(super) fn keys(global: &GlobalArgs, args: &KeysArgs, progress: &Progress) -> Result<()> {
    let (keyring_args, change) = match &args.command {
        KeysCommand::Generate(generate) => return generate_key(global, generate),
        KeysCommand::Init(init) => (
            &init.keyring,
            Change::Init {
                signing: init
                    .signing
                    .iter()
                    .map(|path| {
                        PublicKey::load(path)
                            .with_context(|| format!("loading public key {}", path.display()))
                    })
                    .collect::<Result<_>>()?,
            },
        ),
        KeysCommand::Add(add) => (
            &add.keyring,
            Change::Add {
                key: Box::new(
                    PublicKey::load(&add.public)
                        .with_context(|| format!("loading public key {}", add.public.display()))?,
                ),
                role: match add.role {
                    RoleArg::Root => KeyRole::Root,
                    RoleArg::Signing => KeyRole::Signing,
                },
                note: add.note.clone(),
            },
        ),
        KeysCommand::Remove(remove) => (
            &remove.keyring,
            Change::Remove {
                key_id: remove.key_id.parse()?,
            },
        ),
        KeysCommand::Renew(renew) => (&renew.keyring, Change::Renew),
    };
    let request = keyring::KeyringRequest {
        roots: keyring::load_roots(&keyring_args.roots)?,
        change,
        threshold: keyring_args.threshold,
        valid_for: keyring_args.valid_for,
    };
    let pinned = defaults::trusted_keys(&keyring_args.trust)?;
    let (store, _lock) = locked(global, &keyring_args.store, progress)?;
    let now = OffsetDateTime::now_utc();
    let keyring = keyring::change(store.as_ref(), &pinned, &request, now, progress)?;
    if global.json {
        out!("{}", serde_json::to_string_pretty(&keyring)?);
        return Ok(());
    }
    out!(
        "{} is now serial {}, expires {}",
        store.reader().location(boxcar_client::layout::KEYRING),
        keyring.serial,
        keyring.expires_at
    );
    for (role, keys) in [("root", &keyring.root), ("signing", &keyring.signing)] {
        out!(
            "  {role} keys (threshold {}): {}",
            keys.threshold,
            keys.keys
                .iter()
                .map(|k| k.key_id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

fn generate_key(global: &GlobalArgs, generate: &crate::cmdline::KeysGenerateArgs) -> Result<()> {
    let made = keys::generate(&generate.out, &generate.name)?;
    if global.json {
        out!(
            "{}",
            serde_json::json!({
                "key_id": made.key.key_id().to_string(),
                "secret_key": made.secret_path,
                "public_key": made.public_path,
                "public_key_line": made.key.public_key().to_base64(),
            })
        );
    } else {
        out!("key {}", made.key.key_id());
        out!(
            "  secret  {} (keep private: never commit it, never print it)",
            made.secret_path.display()
        );
        out!(
            "  public  {} (pin this; `minisign -V -p` reads it)",
            made.public_path.display()
        );
    }
    Ok(())
}

pub(super) fn publish(global: &GlobalArgs, args: &PublishArgs, progress: &Progress) -> Result<()> {
    let project = Project::discover(global.project.as_deref())?;
    let channels = Channels::load(&project.channels_dir())?;
    let channel = args
        .channel
        .as_ref()
        .map(|name| channels.get(name))
        .transpose()?;
    let signer = keys::load_signer(args.key.as_deref())?;
    let pinned = defaults::trusted_keys(&args.trust.trust)?;
    let (store, _lock) = locked(global, &args.store, progress)?;
    // A publish is safe to run again: a second attempt finds its release
    // in place and only points the channel again.
    let downgrade = Downgrade::allowed_if(args.allow_downgrade);
    let published = retrying_conflicts(progress, || {
        let writer = Writer::new(store.as_ref(), &signer, &pinned, OffsetDateTime::now_utc())?;
        publishing::publish(&writer, &args.build, channel, downgrade, progress)
    })?;
    if global.json {
        out!("{}", serde_json::to_string_pretty(&published)?);
    } else {
        out!(
            "published {} ({} artifacts, {}) to {}",
            published.version,
            published.artifacts,
            human_bytes(published.bytes),
            published.release_dir
        );
        out!("  release.json sha256 {}", published.release_sha256);
        if let Some((channel, serial)) = &published.channel {
            out!(
                "  channel {channel} now points at {} (serial {serial})",
                published.version
            );
        }
    }
    Ok(())
}

pub(super) fn promote(global: &GlobalArgs, args: &PromoteArgs, progress: &Progress) -> Result<()> {
    let project = Project::discover(global.project.as_deref())?;
    let channels = Channels::load(&project.channels_dir())?;
    let signer = keys::load_signer(args.key.as_deref())?;
    let pinned = defaults::trusted_keys(&args.trust.trust)?;
    let (store, _lock) = locked(global, &args.store, progress)?;
    if args.pause || args.resume {
        return retrying_conflicts(progress, || {
            let writer = Writer::new(store.as_ref(), &signer, &pinned, OffsetDateTime::now_utc())?;
            change_rollout(global, args, &writer, &channels)
        });
    }
    let request = promotion::PromoteRequest {
        to: args.to.clone(),
        version: args.version.clone(),
        downgrade: Downgrade::allowed_if(args.allow_downgrade),
    };
    // Each attempt plans from the store as it is then: after another
    // writer's promotion the channel may already be where this one wants it.
    let (planned, applied) = retrying_conflicts(progress, || {
        let writer = Writer::new(store.as_ref(), &signer, &pinned, OffsetDateTime::now_utc())?;
        let planned = promotion::plan(&writer, &channels, &request)?;
        progress.note(&describe_change(&planned));
        for check in &planned.checks {
            progress.note(&format!("  ok  {}: {}", check.name, check.detail));
        }
        let applied = !planned.unchanged && !args.dry_run;
        if applied {
            promotion::apply(&writer, &planned)?;
        }
        Ok((planned, applied))
    })?;
    let change = describe_change(&planned);
    if global.json {
        out!(
            "{}",
            serde_json::json!({
                "promotion": &planned,
                "dry_run": args.dry_run,
                "written": applied,
            })
        );
    } else if planned.unchanged {
        out!("{change} (to re-sign its document before it expires, run `boxcar renew`)");
    } else if args.dry_run {
        out!("dry run: would promote {change}");
    } else {
        out!(
            "promoted {change}; channel document expires {}",
            planned.expires_at
        );
    }
    Ok(())
}

/// `promote --pause` and `--resume`.
fn change_rollout(
    global: &GlobalArgs,
    args: &PromoteArgs,
    writer: &Writer,
    channels: &Channels,
) -> Result<()> {
    use promotion::RolloutChange;
    let change = if args.pause {
        RolloutChange::Pause
    } else {
        RolloutChange::Resume
    };
    if args.dry_run {
        anyhow::bail!("--dry-run does not apply to --pause and --resume");
    }
    let changed = promotion::change_rollout(writer, channels, &args.to, change)?;
    let verb = match change {
        RolloutChange::Pause => "paused",
        RolloutChange::Resume => "resumed",
    };
    if global.json {
        out!("{}", serde_json::to_string_pretty(&changed)?);
    } else if changed.written {
        out!(
            "{verb} the rollout of {} on {} (serial {}, expires {})",
            changed.version,
            changed.channel,
            changed.serial,
            changed.expires_at
        );
    } else {
        out!(
            "the rollout of {} on {} is already {verb}; nothing written",
            changed.version,
            changed.channel
        );
    }
    Ok(())
}

pub(super) fn renew(global: &GlobalArgs, args: &RenewArgs, progress: &Progress) -> Result<()> {
    let project = Project::discover(global.project.as_deref())?;
    let channels = Channels::load(&project.channels_dir())?;
    let signer = keys::load_signer(args.key.as_deref())?;
    let pinned = defaults::trusted_keys(&args.trust.trust)?;
    let (store, _lock) = locked(global, &args.store, progress)?;
    let renewed = retrying_conflicts(progress, || {
        let writer = Writer::new(store.as_ref(), &signer, &pinned, OffsetDateTime::now_utc())?;
        renewal::renew(&writer, &channels, args.all)
    })?;
    if global.json {
        out!("{}", serde_json::to_string_pretty(&renewed)?);
    } else if renewed.is_empty() {
        out!("nothing is due for renewal (pass --all to renew everything)");
    } else {
        for document in &renewed {
            let serials = document
                .serials
                .map_or(String::new(), |(a, b)| format!(": serial {a} -> {b}"));
            let expires = document
                .expires_at
                .as_ref()
                .map_or(String::new(), |e| format!(", expires {e}"));
            out!("renewed {}{serials}{expires}", document.path);
        }
    }
    Ok(())
}

/// One line saying what a promotion changes.
fn describe_change(promotion: &promotion::Promotion) -> String {
    match (&promotion.current, promotion.unchanged) {
        (_, true) => format!(
            "{} already points at {}: nothing to do",
            promotion.to, promotion.version
        ),
        (Some(current), false) => format!(
            "{}: {current} (serial {}) -> {} (serial {}), from {}",
            promotion.to,
            promotion.current_serial.unwrap_or(0),
            promotion.version,
            promotion.next_serial,
            promotion.from
        ),
        (None, false) => format!(
            "{}: (empty) -> {} (serial {}), from {}",
            promotion.to, promotion.version, promotion.next_serial, promotion.from
        ),
    }
}

pub(super) fn repair(global: &GlobalArgs, args: &RepairArgs, progress: &Progress) -> Result<()> {
    #[derive(Serialize)]
    struct Repaired<'a> {
        store: String,
        repaired: &'a [String],
    }
    let store = backend::open(&args.store, &global.s3_options())?;
    let lock = store.lock(&|waiting| progress.note(waiting))?;
    if global.json {
        out!(
            "{}",
            serde_json::to_string_pretty(&Repaired {
                store: store.describe(),
                repaired: &lock.repaired,
            })?
        );
    } else if lock.repaired.is_empty() {
        out!("{}: nothing to repair", store.describe());
    } else {
        for line in &lock.repaired {
            out!("{line}");
        }
    }
    Ok(())
}
