//! When an installed update may reboot the host. The strategies are
//! Zincati's: `immediate`, `periodic` (weekly maintenance windows, UTC),
//! `fleet_lock` (a FleetLock server grants the reboot; with windows set,
//! only inside them) and `off` (never; `/run/reboot-required` says one is
//! due, which every strategy writes).

use anyhow::{bail, Context, Result};
use time::{OffsetDateTime, Weekday};

use crate::config::{Config, StrategyName, WindowConfig};
use crate::fleet_lock::FleetLock;

/// A weekly window, in minutes from Monday 00:00 UTC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    starts: Vec<u32>,
    length: u32,
}

const WEEK: u32 = 7 * 24 * 60;

impl Window {
    pub fn parse(config: &WindowConfig) -> Result<Self> {
        let (hours, minutes) = config
            .start_time
            .split_once(':')
            .and_then(|(h, m)| Some((h.parse::<u32>().ok()?, m.parse::<u32>().ok()?)))
            .filter(|&(h, m)| h < 24 && m < 60)
            .with_context(|| {
                format!(
                    "updates.periodic.window: start_time {:?} is not HH:MM",
                    config.start_time
                )
            })?;
        if config.length_minutes == 0 || config.length_minutes > WEEK {
            bail!(
                "updates.periodic.window: length_minutes must be between 1 and {WEEK}, not {}",
                config.length_minutes
            );
        }
        if config.days.is_empty() {
            bail!("updates.periodic.window: days is empty");
        }
        let mut starts = Vec::new();
        for day in &config.days {
            let index = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
                .iter()
                .position(|d| d.eq_ignore_ascii_case(day))
                .with_context(|| {
                    format!("updates.periodic.window: {day:?} is not a day (Mon .. Sun)")
                })? as u32;
            starts.push(index * 24 * 60 + hours * 60 + minutes);
        }
        Ok(Self {
            starts,
            length: config.length_minutes,
        })
    }

    /// Whether `now` is inside the window.
    pub fn contains(&self, now: OffsetDateTime) -> bool {
        let now = minute_of_week(now);
        self.starts
            .iter()
            .any(|&start| (now + WEEK - start) % WEEK < self.length)
    }
}

fn minute_of_week(time: OffsetDateTime) -> u32 {
    let time = time.to_offset(time::UtcOffset::UTC);
    let day = match time.weekday() {
        Weekday::Monday => 0,
        Weekday::Tuesday => 1,
        Weekday::Wednesday => 2,
        Weekday::Thursday => 3,
        Weekday::Friday => 4,
        Weekday::Saturday => 5,
        Weekday::Sunday => 6,
    };
    day * 24 * 60 + u32::from(time.hour()) * 60 + u32::from(time.minute())
}

/// What the strategy says about rebooting now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RebootDecision {
    Now {
        lock_taken: bool,
    },
    /// Not now; ask again later.
    Wait(String),
    /// Never on its own (strategy `off`).
    Never,
}

/// Asks the configured strategy whether the host may reboot at `now`.
pub fn may_reboot(config: &Config, now: OffsetDateTime, node_id: &str) -> Result<RebootDecision> {
    let windows: Vec<Window> = config
        .updates
        .periodic
        .window
        .iter()
        .map(Window::parse)
        .collect::<Result<_>>()?;
    let in_window = windows.is_empty() || windows.iter().any(|w| w.contains(now));
    Ok(match config.updates.strategy {
        StrategyName::Immediate => RebootDecision::Now { lock_taken: false },
        StrategyName::Off => RebootDecision::Never,
        StrategyName::Periodic if in_window => RebootDecision::Now { lock_taken: false },
        StrategyName::Periodic | StrategyName::FleetLock if !in_window => {
            RebootDecision::Wait("outside every maintenance window".into())
        }
        StrategyName::Periodic => unreachable!("handled above"),
        StrategyName::FleetLock => {
            let lock = FleetLock::new(&config.updates.fleet_lock, node_id, config)?;
            let answer = lock.pre_reboot().with_context(|| {
                format!(
                    "asking the fleet lock at {} for a reboot slot",
                    config.updates.fleet_lock.base_url
                )
            })?;
            match answer {
                None => RebootDecision::Now { lock_taken: true },
                Some(refusal) => RebootDecision::Wait(format!(
                    "the fleet lock at {} refused a reboot slot: {refusal}",
                    config.updates.fleet_lock.base_url
                )),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn window(days: &[&str], start: &str, length: u32) -> Result<Window> {
        Window::parse(&WindowConfig {
            days: days.iter().map(|d| d.to_string()).collect(),
            start_time: start.into(),
            length_minutes: length,
        })
    }

    #[test]
    fn windows_open_on_their_days_and_wrap_around_the_week() {
        // 2026-12-05 is a Saturday.
        let weekend = window(&["Sat", "Sun"], "22:30", 60).unwrap();
        assert!(weekend.contains(datetime!(2026-12-05 22:30 UTC)));
        assert!(weekend.contains(datetime!(2026-12-05 23:29 UTC)));
        assert!(!weekend.contains(datetime!(2026-12-05 23:30 UTC)));
        assert!(!weekend.contains(datetime!(2026-12-04 22:45 UTC)));
        // Sunday 22:30 + 120 minutes runs into Monday.
        let late = window(&["sun"], "22:30", 120).unwrap();
        assert!(late.contains(datetime!(2026-12-07 00:15 UTC)));
        assert!(!late.contains(datetime!(2026-12-07 00:30 UTC)));
        assert!(window(&["Sat"], "24:00", 10).is_err());
        assert!(window(&["Caturday"], "01:00", 10).is_err());
        assert!(window(&["Sat"], "01:00", 0).is_err());
    }

    #[test]
    fn strategies_decide_without_a_lock_server() {
        let mut config = Config::default();
        let now = datetime!(2026-12-05 12:00 UTC);
        assert_eq!(
            may_reboot(&config, now, "id").unwrap(),
            RebootDecision::Now { lock_taken: false }
        );
        config.updates.strategy = StrategyName::Off;
        assert_eq!(
            may_reboot(&config, now, "id").unwrap(),
            RebootDecision::Never
        );
        config.updates.strategy = StrategyName::Periodic;
        config.updates.periodic.window = vec![WindowConfig {
            days: vec!["Sat".into()],
            start_time: "11:30".into(),
            length_minutes: 60,
        }];
        assert_eq!(
            may_reboot(&config, now, "id").unwrap(),
            RebootDecision::Now { lock_taken: false }
        );
        assert!(matches!(
            may_reboot(&config, datetime!(2026-12-05 13:00 UTC), "id").unwrap(),
            RebootDecision::Wait(_)
        ));
        // Outside the windows, fleet_lock does not even ask the server.
        config.updates.strategy = StrategyName::FleetLock;
        config.updates.fleet_lock.base_url = "http://127.0.0.1:9".into();
        assert!(matches!(
            may_reboot(&config, datetime!(2026-12-05 13:00 UTC), "id").unwrap(),
            RebootDecision::Wait(w) if w.contains("window")
        ));
    }
}
