//! Ctrl-C and SIGTERM: remember the request instead of dying on the spot,
//! so a build can stop its tools and remove its half-written output. And
//! the opposite, for crash tests: dying on purpose at a named point.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Files holding secrets, removed even by a second Ctrl-C's exit, which
/// runs no destructors.
static SECRETS: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Removes `path` if the process exits on a second Ctrl-C.
pub fn remove_on_exit(path: &std::path::Path) {
    if let Ok(mut paths) = SECRETS.lock() {
        paths.push(path.to_owned());
    }
}

/// Why work stopped: the user asked it to.
#[derive(Debug, thiserror::Error)]
#[error("interrupted (Ctrl-C or SIGTERM)")]
pub struct Interrupted;

/// Installs the handler; call once, early in `main`.
pub fn install() {
    // If a handler is already set (tests, embedding), keep it.
    let _ = ctrlc::set_handler(|| {
        if request() {
            // A second request: the user insists. Leave now, but not
            // with a secret left on disk.
            eprintln!("interrupted again; exiting without cleaning up");
            for path in SECRETS
                .lock()
                .map(|paths| paths.clone())
                .unwrap_or_default()
            {
                let _ = std::fs::remove_file(path);
            }
            std::process::exit(130);
        }
        eprintln!("interrupted; stopping and cleaning up (press Ctrl-C again to exit at once)");
    });
}

/// Records a request to stop, as Ctrl-C does; says whether one was
/// recorded before.
pub(crate) fn request() -> bool {
    REQUESTED.swap(true, Ordering::SeqCst)
}

/// Whether the user asked to stop.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Fails if the user asked to stop. The request only stops the child
/// process that runs at the time ([`crate::process`]); work in our own
/// code (packaging, hashing) calls this between its steps.
pub fn check() -> Result<(), Interrupted> {
    if requested() {
        return Err(Interrupted);
    }
    Ok(())
}

/// For crash tests: dies here, without any cleanup, when the environment
/// variable BOXCAR_CRASH_AT names this point. Costs one environment lookup.
pub fn crash_point(name: &str) {
    if std::env::var_os("BOXCAR_CRASH_AT").is_some_and(|v| v == name) {
        eprintln!("boxcar: crashing on purpose at {name} (BOXCAR_CRASH_AT)");
        std::process::abort();
    }
}
