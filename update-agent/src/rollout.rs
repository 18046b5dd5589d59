//! Whether the host's wave has come: a channel's rollout opens its release
//! to a growing share of the fleet as time passes, and the host is in the
//! share once its position (see [`crate::identity`]) is below it.

use boxcar_signing::documents::{self, Rollout};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Where the host stands in a rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "wave", rename_all = "kebab-case")]
pub enum WaveStatus {
    /// The host may update now.
    Open { percent: u8 },
    /// The rollout is paused.
    Paused { since: String },
    /// Not yet: the share open now, and when the next wave opens.
    NotYet {
        percent: u8,
        next_wave_at: Option<String>,
    },
}

/// The host's place in `rollout` at `now` (no rollout: open to everyone).
pub fn wave_status(
    rollout: Option<&Rollout>,
    position: f64,
    now: OffsetDateTime,
) -> Result<WaveStatus, boxcar_signing::Error> {
    let Some(rollout) = rollout else {
        return Ok(WaveStatus::Open { percent: 100 });
    };
    if let Some(since) = &rollout.paused_at {
        return Ok(WaveStatus::Paused {
            since: since.clone(),
        });
    }
    let start = documents::parse_time(&rollout.start, "the channel's rollout")?;
    let elapsed = (now - start).whole_seconds();
    let percent = rollout.percent_after(elapsed);
    if position * 100.0 < f64::from(percent) {
        return Ok(WaveStatus::Open { percent });
    }
    // The next wave that takes this host, not merely the next wave.
    let next_wave_at = rollout
        .waves
        .iter()
        .filter(|w| position * 100.0 < f64::from(w.percent))
        .map(|w| w.after_seconds)
        .min()
        .map(|after| documents::format_time(start + time::Duration::seconds(after as i64)));
    Ok(WaveStatus::NotYet {
        percent,
        next_wave_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use boxcar_signing::documents::Wave;
    use time::macros::datetime;

    fn bottlerocket() -> Rollout {
        let hour = 3600;
        let day = 24 * hour;
        Rollout {
            start: "2026-12-01T00:00:00Z".into(),
            paused_at: None,
            waves: [
                (hour, 1),
                (4 * hour, 5),
                (day, 15),
                (2 * day, 40),
                (4 * day, 60),
                (5 * day, 90),
                (6 * day, 100),
            ]
            .into_iter()
            .map(|(after_seconds, percent)| Wave {
                after_seconds,
                percent,
            })
            .collect(),
        }
    }

    fn fleet() -> Vec<f64> {
        (0..10_000u32)
            .map(|i| {
                Identity::of(&format!("{:032x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15)).position
            })
            .collect()
    }

    /// Over 10,000 simulated machine ids each wave takes its share (within
    /// a statistical margin), and a host once in stays in.
    #[test]
    fn waves_take_their_share_of_a_simulated_fleet_and_never_let_go() {
        let rollout = bottlerocket();
        let start = datetime!(2026-12-01 00:00 UTC);
        let fleet = fleet();
        let mut open_before = vec![false; fleet.len()];
        for (hours, percent) in [
            (0, 0),
            (1, 1),
            (4, 5),
            (24, 15),
            (48, 40),
            (96, 60),
            (120, 90),
            (144, 100),
        ] {
            let now = start + time::Duration::hours(hours) + time::Duration::minutes(1);
            let open: Vec<bool> = fleet
                .iter()
                .map(|&p| {
                    matches!(
                        wave_status(Some(&rollout), p, now).unwrap(),
                        WaveStatus::Open { .. }
                    )
                })
                .collect();
            let share = open.iter().filter(|&&o| o).count() as f64 / fleet.len() as f64 * 100.0;
            assert!(
                (share - f64::from(percent)).abs() <= 1.0,
                "{hours} h: {share:.2} % open, the wave says {percent} %"
            );
            for (before, now) in open_before.iter().zip(&open) {
                assert!(!before || *now, "a host left the rollout after {hours} h");
            }
            open_before = open;
        }
    }

    #[test]
    fn the_same_host_gets_the_same_answer_and_is_told_its_next_wave() {
        let rollout = bottlerocket();
        let now = datetime!(2026-12-01 02:00 UTC);
        let host = 0.10;
        let first = wave_status(Some(&rollout), host, now).unwrap();
        assert_eq!(first, wave_status(Some(&rollout), host, now).unwrap());
        assert_eq!(
            first,
            WaveStatus::NotYet {
                percent: 1,
                next_wave_at: Some("2026-12-02T00:00:00Z".into())
            }
        );
        let mut paused = rollout.clone();
        paused.paused_at = Some("2026-12-01T01:30:00Z".into());
        assert!(matches!(
            wave_status(Some(&paused), 0.0, now).unwrap(),
            WaveStatus::Paused { .. }
        ));
        assert_eq!(
            wave_status(None, 0.99, now).unwrap(),
            WaveStatus::Open { percent: 100 }
        );
    }
}
