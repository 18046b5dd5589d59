//! Phase timing: each phase runs under a progress line, and how long it
//! took goes into build.json's `phases`.

use std::time::Duration;

use anyhow::Result;

use crate::progress::{Phase, Progress};
use crate::records::buildinfo::PhaseTiming;

/// Runs one phase with a progress line and records its duration.
pub(super) fn timed<T>(
    progress: &Progress,
    timings: &mut Vec<PhaseTiming>,
    name: &str,
    work: impl FnOnce(&mut Phase) -> Result<(T, String)>,
) -> Result<T> {
    let mut phase = progress.phase(name);
    match work(&mut phase) {
        Ok((value, summary)) => {
            let elapsed = phase.done(&summary);
            timings.push(phase_timing(name, elapsed));
            Ok(value)
        }
        Err(error) => {
            phase.failed();
            Err(error.context(format!("build phase `{name}` failed")))
        }
    }
}

/// The record of a phase (or of a part of one) that took `elapsed`.
pub(super) fn phase_timing(name: impl Into<String>, elapsed: Duration) -> PhaseTiming {
    PhaseTiming {
        name: name.into(),
        seconds: round_seconds(elapsed),
    }
}

fn round_seconds(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 100.0).round() / 100.0
}
