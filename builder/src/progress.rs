//! Progress on stderr: spinners and bars on a terminal, plain lines in logs
//! and CI, nothing under `--quiet`. Results go to stdout, never here.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Animated spinners and bars (stderr is a terminal).
    Terminal,
    /// One line per event, for logs.
    Plain,
    /// Nothing at all.
    Quiet,
}

/// The progress reporter a command hands to its phases.
#[derive(Clone, Debug)]
pub struct Progress {
    mode: Mode,
}

impl Progress {
    /// Terminal mode when stderr is a terminal, plain otherwise; quiet wins.
    pub fn new(quiet: bool) -> Self {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Terminal
        } else {
            Mode::Plain
        };
        Self { mode }
    }

    pub fn with_mode(mode: Mode) -> Self {
        Self { mode }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A line of information.
    pub fn note(&self, message: &str) {
        if self.mode != Mode::Quiet {
            eprintln!("{message}");
        }
    }

    /// Starts a named phase of work with an elapsed-time spinner.
    pub fn phase(&self, name: &str) -> Phase {
        let bar = match self.mode {
            Mode::Terminal => {
                let bar = ProgressBar::new_spinner();
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner:.cyan} {prefix:.bold} [{elapsed}] {wide_msg}",
                    )
                    .expect("valid template"),
                );
                bar.set_prefix(name.to_owned());
                bar.enable_steady_tick(Duration::from_millis(120));
                Some(bar)
            }
            Mode::Plain => {
                eprintln!("==> {name}");
                None
            }
            Mode::Quiet => None,
        };
        Phase {
            name: name.to_owned(),
            mode: self.mode,
            bar,
            started: Instant::now(),
            last_plain_line: None,
        }
    }

    /// A byte-counting bar (hashing, copying).
    pub fn bytes(&self, name: &str, total: u64) -> ProgressBar {
        match self.mode {
            Mode::Terminal => {
                let bar = ProgressBar::new(total);
                bar.set_style(
                    ProgressStyle::with_template(
                        "  {prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                bar.set_prefix(name.to_owned());
                bar
            }
            Mode::Plain | Mode::Quiet => {
                ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden())
            }
        }
    }
}

/// One running phase. Finish it with [`Phase::done`] or [`Phase::failed`].
pub struct Phase {
    name: String,
    mode: Mode,
    bar: Option<ProgressBar>,
    started: Instant,
    last_plain_line: Option<Instant>,
}

/// In plain mode a phase's status lines are printed at most this often,
/// except for lines marked important.
const PLAIN_LINE_INTERVAL: Duration = Duration::from_secs(5);

impl Phase {
    /// Shows what the phase is doing now (the latest step of a tool).
    pub fn status(&mut self, message: &str) {
        match self.mode {
            Mode::Terminal => {
                if let Some(bar) = &self.bar {
                    bar.set_message(message.to_owned());
                }
            }
            Mode::Plain => {
                let due = self
                    .last_plain_line
                    .is_none_or(|t| t.elapsed() >= PLAIN_LINE_INTERVAL);
                if due {
                    eprintln!("    {message}");
                    self.last_plain_line = Some(Instant::now());
                }
            }
            Mode::Quiet => {}
        }
    }

    /// A notable step: shown as the status on a terminal, always printed as
    /// a line in plain mode.
    pub fn milestone(&mut self, message: &str) {
        match self.mode {
            Mode::Terminal => self.status(message),
            Mode::Plain => {
                eprintln!("    {message}");
                self.last_plain_line = Some(Instant::now());
            }
            Mode::Quiet => {}
        }
    }

    /// Prints a line above the spinner (or as a plain line).
    pub fn println(&self, message: &str) {
        match (&self.bar, self.mode) {
            (Some(bar), _) => bar.println(message),
            (None, Mode::Plain) => eprintln!("    {message}"),
            _ => {}
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Ends the phase as successful; returns how long it took.
    pub fn done(self, summary: &str) -> Duration {
        self.finish("✓", summary)
    }

    /// Ends the phase as failed.
    pub fn failed(self) -> Duration {
        self.finish("✗", "failed")
    }

    fn finish(mut self, mark: &str, summary: &str) -> Duration {
        let elapsed = self.started.elapsed();
        let bar = self.bar.take();
        let line = format!(
            "{mark} {} ({:.1}s){}",
            self.name,
            elapsed.as_secs_f64(),
            if summary.is_empty() {
                String::new()
            } else {
                format!(": {summary}")
            }
        );
        match (bar, self.mode) {
            (Some(bar), _) => bar.finish_and_clear(),
            (None, Mode::Quiet) => return elapsed,
            _ => {}
        }
        eprintln!("{line}");
        elapsed
    }
}

impl Drop for Phase {
    /// A phase abandoned by an error: stop its spinner.
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
