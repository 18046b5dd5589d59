//! The smallest program over the client library: fetch one platform's
//! artifact of a channel's current release, verified, into a directory.
//! It shows what a program needs besides the library (nothing but the
//! signing crate for the pinned key), and its size is the library's
//! measure in BENCHMARKS.md.
//!
//!     cargo run --release -p boxcar-client --example fetch -- \
//!         STORE PUBLIC_KEY_FILE CHANNEL PLATFORM DIR

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use boxcar_client::chain::Selector;
use boxcar_client::layout::SafeName;
use boxcar_client::rollback::SerialState;
use boxcar_client::{Client, NetworkSettings, Silent};
use boxcar_signing::documents::ExpirationEnforcement;
use boxcar_signing::{PublicKey, TrustedKeys};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [store, key, channel, platform, dir] = args.as_slice() else {
        eprintln!("usage: fetch STORE PUBLIC_KEY_FILE CHANNEL PLATFORM DIR");
        return ExitCode::from(2);
    };
    match fetch(store, key, channel, platform, Path::new(dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn fetch(
    store: &str,
    key: &str,
    channel: &str,
    platform: &str,
    dir: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let pinned = TrustedKeys::new([PublicKey::load(Path::new(key))?]);
    let client = Client::open(store, NetworkSettings::default(), Arc::new(Silent))?;
    let mut state = SerialState::load(&dir.join("seen-serials.json"))?;
    let now = time::OffsetDateTime::now_utc();
    let trust = client.trust(
        &pinned,
        ExpirationEnforcement::Enforce,
        now,
        Some(&mut state),
    )?;
    let selector = Selector::Channel {
        name: SafeName::new("channel", channel)?,
        version: None,
    };
    let mut state = SerialState::load(&dir.join("seen-serials.json"))?;
    let resolved = client.resolve(
        &trust,
        &selector,
        &mut state,
        time::OffsetDateTime::now_utc(),
    )?;
    for artifact in &resolved.release.document.artifacts {
        if artifact.platform == platform {
            let file = client.fetch_artifact(&resolved.version, artifact, dir)?;
            println!("{}  {}", file.sha256, file.path.display());
        }
    }
    Ok(())
}
