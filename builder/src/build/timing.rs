//! Phase timing: each phase runs under a progress line, and how long it
//! took goes into build.json's `phases`.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::progress::{Phase, Progress};
use crate::records::buildinfo::PhaseTiming;

/// Runs one phase with a progress line and records its duration. After
/// Ctrl-C or SIGTERM the build stops at the end of the phase: only a child
/// process is stopped at once, a phase of our own code (packaging, hashing)
/// runs to its end.
pub(super) fn timed<T>(
    progress: &Progress,
    timings: &mut Vec<PhaseTiming>,
    name: &str,
    work: impl FnOnce(&mut Phase) -> Result<(T, String)>,
) -> Result<T> {
    let mut phase = progress.phase(name);
    let (value, summary) = match work(&mut phase) {
        Ok(done) => done,
        Err(error) => {
            phase.failed();
            return Err(error.context(format!("build phase `{name}` failed")));
        }
    };
    let elapsed = phase.done(&summary);
    timings.push(phase_timing(name, elapsed));
    crate::interrupt::check().with_context(|| format!("stopping after build phase `{name}`"))?;
    Ok(value)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_that_succeeds_is_timed() {
        let mut timings = Vec::new();
        let value = timed(&Progress::new(true), &mut timings, "digest", |_| {
            Ok((7, "done".to_owned()))
        })
        .unwrap();
        assert_eq!(value, 7);
        assert_eq!(timings.len(), 1);
    }

    #[test]
    fn after_an_interrupt_the_build_stops_at_the_end_of_the_phase() {
        if !crate::isolated::in_own_process(
            module_path!(),
            "after_an_interrupt_the_build_stops_at_the_end_of_the_phase",
        ) {
            return;
        }
        crate::interrupt::request();
        let mut timings = Vec::new();
        let error = timed(&Progress::new(true), &mut timings, "digest", |_| {
            Ok((7, "done".to_owned()))
        })
        .unwrap_err();
        let message = format!("{error:#}");
        assert_eq!(
            message,
            "stopping after build phase `digest`: interrupted (Ctrl-C or SIGTERM)"
        );
    }
}
