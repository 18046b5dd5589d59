//! The writers' verbs: `boxcar keys`, `boxcar publish`, `boxcar promote`
//! and `boxcar repair`.

use anyhow::Result;
use boxcar_signing::Sign;
use serde::Serialize;
use time::OffsetDateTime;

use crate::channel::Channels;
use crate::cmdline::{GlobalArgs, KeysArgs, KeysCommand, PromoteArgs, PublishArgs, RepairArgs};
use crate::progress::Progress;
use crate::project::Project;
use crate::release::{backend, documents, keys, promote as promotion, publish as publishing};
use crate::units::human_bytes;

/// Opens a store for writing and takes the writers' lock, reporting what
/// taking it repaired.
fn locked(
    store: &std::path::Path,
    progress: &Progress,
) -> Result<(Box<dyn backend::StoreBackend>, backend::WriterLock)> {
    let store = backend::open(store)?;
    let lock = store.lock(&|waiting| progress.note(waiting))?;
    for line in &lock.repaired {
        progress.note(line);
    }
    Ok((store, lock))
}

pub(super) fn keys(global: &GlobalArgs, args: &KeysArgs) -> Result<()> {
    match &args.command {
        KeysCommand::Generate(generate) => {
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
        KeysCommand::Add(add) => {
            let signer = keys::load_signer(add.key.as_deref())?;
            let new_key = boxcar_signing::PublicKey::load(&add.public)?;
            let (store, _lock) = locked(&add.store, &Progress::new(global.quiet))?;
            let keyring = documents::add_key(
                store.as_ref(),
                &signer,
                &new_key,
                &add.note,
                OffsetDateTime::now_utc(),
            )?;
            if global.json {
                out!("{}", serde_json::to_string_pretty(&keyring)?);
            } else {
                out!(
                    "{} now lists {} keys (serial {}), signed by {}",
                    store.reader().location(boxcar_client::layout::KEYRING),
                    keyring.keys.len(),
                    keyring.serial,
                    signer.key_id()
                );
            }
            Ok(())
        }
    }
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
    let (store, _lock) = locked(&args.store, progress)?;
    let published = publishing::publish(store.as_ref(), &args.build, &signer, channel, progress)?;
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
    let (store, _lock) = locked(&args.store, progress)?;
    let now = OffsetDateTime::now_utc();
    let request = promotion::PromoteRequest {
        to: args.to.clone(),
        version: args.version.clone(),
        allow_downgrade: args.allow_downgrade,
    };
    let planned = promotion::plan(store.as_ref(), &channels, &signer, &request, now)?;
    let change = describe_change(&planned);
    progress.note(&change);
    for check in &planned.checks {
        progress.note(&format!("  ok  {}: {}", check.name, check.detail));
    }
    let applied = !planned.unchanged && !args.dry_run;
    if applied {
        promotion::apply(store.as_ref(), &signer, &planned, now)?;
    }
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
        out!("{change}");
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
    let store = backend::open(&args.store)?;
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
