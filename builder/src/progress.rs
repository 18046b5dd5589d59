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

/// Progress for downloads.
impl Progress {
    /// A byte bar with rate and ETA on a terminal; a line every few seconds
    /// in plain mode; nothing when quiet.
    pub fn download_bar(&self, name: &str, total: u64) -> ProgressBar {
        match self.mode() {
            Mode::Terminal => {
                let bar = ProgressBar::new(total);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                bar.set_prefix(name.to_owned());
                bar
            }
            Mode::Plain => {
                let bar = ProgressBar::with_draw_target(
                    Some(total),
                    indicatif::ProgressDrawTarget::term_like_with_hz(
                        Box::new(PlainLines::new(name)),
                        1,
                    ),
                );
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bytes}/{total_bytes} ({percent}%) {binary_bytes_per_sec}",
                    )
                    .expect("valid template"),
                );
                bar
            }
            Mode::Quiet => ProgressBar::hidden(),
        }
    }
}

/// Draws a progress bar as one plain line per update (for logs), at most
/// every few seconds.
#[derive(Debug)]
struct PlainLines {
    name: String,
    last: std::sync::Mutex<Option<Instant>>,
}

impl PlainLines {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            last: std::sync::Mutex::new(None),
        }
    }
}

impl indicatif::TermLike for PlainLines {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, line: &str) -> std::io::Result<()> {
        self.write_str(line)
    }
    fn write_str(&self, text: &str) -> std::io::Result<()> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(());
        }
        let mut last = self.last.lock().expect("progress lock");
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(2)) {
            eprintln!("    {}: {text}", self.name);
            *last = Some(Instant::now());
        }
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Shows a client's transfers as download bars and its notices as lines.
pub struct TransferProgress {
    progress: Progress,
    bar: std::sync::Mutex<Option<ProgressBar>>,
}

impl TransferProgress {
    pub fn new(progress: Progress) -> Self {
        Self {
            progress,
            bar: std::sync::Mutex::new(None),
        }
    }
}

impl boxcar_client::Observer for TransferProgress {
    fn notice(&self, message: &str) {
        match &*self.bar.lock().expect("progress lock") {
            Some(bar) if self.progress.mode() == Mode::Terminal => bar.println(message),
            _ => self.progress.note(message),
        }
    }

    fn transfer_started(&self, name: &str, total: u64, from: u64) {
        let bar = self.progress.download_bar(name, total);
        bar.set_position(from);
        *self.bar.lock().expect("progress lock") = Some(bar);
    }

    fn transfer_progress(&self, _name: &str, position: u64) {
        if let Some(bar) = &*self.bar.lock().expect("progress lock") {
            bar.set_position(position);
        }
    }

    fn transfer_finished(&self, _name: &str) {
        if let Some(bar) = self.bar.lock().expect("progress lock").take() {
            bar.finish_and_clear();
        }
    }
}
