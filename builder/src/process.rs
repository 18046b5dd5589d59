//! The one way `boxcar` runs another program.
//!
//! Every child process (mkosi, sfdisk, veritysetup, qemu-img, qemu) goes
//! through [`Step`]: it carries the name of the step for the user ("reading
//! the partition table"), quotes the exact command line in errors, keeps the
//! tail of the output for the error message, and tells "not installed" from
//! "killed by a signal" from a plain failure.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde::de::DeserializeOwned;

/// How many lines of output an error shows.
const TAIL_LINES: usize = 25;

/// How often a long-running child's supervisor checks for Ctrl-C.
const INTERRUPT_POLL: Duration = Duration::from_millis(200);

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("{step}: `{program}` is not installed (not found on PATH){hint}")]
    NotInstalled {
        step: String,
        program: String,
        hint: String,
    },
    #[error("{step}: could not start `{command}`: {source}")]
    Spawn {
        step: String,
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("{step}: `{command}` was killed by signal {signal} ({signal_name}){}", tail_block(.tail))]
    Signal {
        step: String,
        command: String,
        signal: i32,
        signal_name: &'static str,
        tail: String,
    },
    #[error("{step}: `{command}` failed with exit status {code}{}", tail_block(.tail))]
    Failed {
        step: String,
        command: String,
        code: i32,
        tail: String,
    },
    #[error("{step}: reading the output of `{command}`: {source}")]
    Output {
        step: String,
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("{step}: `{command}` printed output that is not the expected JSON: {source}")]
    Json {
        step: String,
        command: String,
        #[source]
        source: serde_json::Error,
    },
}

fn tail_block(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("\n--- last lines of its output ---\n{}", tail.trim_end())
    }
}

/// A named invocation of an external program.
pub struct Step {
    name: String,
    command: Command,
    /// Said in the "not installed" error: how to get the program.
    install_hint: Option<String>,
    /// A file to feed the program on stdin (else nothing).
    stdin: Option<PathBuf>,
    /// A file to receive the program's stdout (else it is captured).
    stdout: Option<PathBuf>,
}

impl Step {
    /// `name` says what the step does, in the words a user would use
    /// ("converting the image to qcow2").
    pub fn new(name: impl Into<String>, program: impl AsRef<OsStr>) -> Self {
        Self {
            name: name.into(),
            command: Command::new(program),
            install_hint: None,
            stdin: None,
            stdout: None,
        }
    }

    /// Feeds `path` to the program's stdin.
    pub fn stdin_file(mut self, path: impl AsRef<Path>) -> Self {
        self.stdin = Some(path.as_ref().to_owned());
        self
    }

    /// Writes the program's stdout to `path` (created or truncated).
    pub fn stdout_file(mut self, path: impl AsRef<Path>) -> Self {
        self.stdout = Some(path.as_ref().to_owned());
        self
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.command.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command.args(args);
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.command.current_dir(dir);
        self
    }

    pub fn install_hint(mut self, hint: impl Into<String>) -> Self {
        self.install_hint = Some(hint.into());
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The command line as a user could paste it into a shell.
    pub fn command_line(&self) -> String {
        let mut words = vec![quote(self.command.get_program())];
        words.extend(self.command.get_args().map(quote));
        words.join(" ")
    }

    /// Runs to completion; succeeds only on exit status 0. Output is kept
    /// for the error message and otherwise dropped.
    pub fn run(self) -> Result<(), StepError> {
        self.output().map(|_| ())
    }

    /// Runs to completion and returns what it wrote to stdout (nothing when
    /// stdout goes to a file).
    pub fn output(mut self) -> Result<Vec<u8>, StepError> {
        let file_error = |step: &Step, path: &Path, source: io::Error| StepError::Output {
            step: step.name.clone(),
            command: format!("{} (file {})", step.command_line(), path.display()),
            source,
        };
        let stdin = match &self.stdin {
            Some(path) => Stdio::from(File::open(path).map_err(|e| file_error(&self, path, e))?),
            None => Stdio::null(),
        };
        let stdout = match &self.stdout {
            Some(path) => Stdio::from(File::create(path).map_err(|e| file_error(&self, path, e))?),
            None => Stdio::piped(),
        };
        self.command
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped());
        let child = self.spawn()?;
        let output = child
            .wait_with_output()
            .map_err(|source| StepError::Output {
                step: self.name.clone(),
                command: self.command_line(),
                source,
            })?;
        let tail = last_lines(&String::from_utf8_lossy(&output.stderr), TAIL_LINES);
        self.check_status(output.status, tail)?;
        Ok(output.stdout)
    }

    /// Runs to completion while `feed` writes the program's stdin (closed
    /// when `feed` returns). Stdout goes to the `stdout_file` if one is set.
    pub fn run_with_input(
        mut self,
        feed: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<(), StepError> {
        let stdout = match &self.stdout {
            Some(path) => Stdio::from(File::create(path).map_err(|source| StepError::Output {
                step: self.name.clone(),
                command: format!("{} (file {})", self.command_line(), path.display()),
                source,
            })?),
            None => Stdio::null(),
        };
        self.command
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(Stdio::piped());
        let mut child = self.spawn()?;
        let stderr = child.stderr.take();
        let stderr_reader = thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = stderr {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        });
        let mut stdin = child.stdin.take().expect("stdin was piped");
        let fed = feed(&mut stdin);
        drop(stdin);
        let status = child.wait().map_err(|source| StepError::Output {
            step: self.name.clone(),
            command: self.command_line(),
            source,
        })?;
        let tail = last_lines(&stderr_reader.join().unwrap_or_default(), TAIL_LINES);
        self.check_status(status, tail)?;
        fed.map_err(|source| StepError::Output {
            step: self.name.clone(),
            command: self.command_line(),
            source,
        })
    }

    /// Runs to completion and returns stdout as text.
    pub fn output_text(self) -> Result<String, StepError> {
        let bytes = self.output()?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Runs to completion and parses stdout as JSON into `T`.
    pub fn json<T: DeserializeOwned>(self) -> Result<T, StepError> {
        let step = self.name.clone();
        let command = self.command_line();
        let bytes = self.output()?;
        serde_json::from_slice(&bytes).map_err(|source| StepError::Json {
            step,
            command,
            source,
        })
    }

    /// Runs to completion with stdout and stderr merged, line by line, into
    /// `log` (after a header naming the command; each line prefixed with the
    /// seconds since the start, so a slow step stands out), calling `on_line`
    /// for each line so the caller can show progress. The error carries the
    /// output's last lines.
    pub fn run_logged(
        mut self,
        log: &mut File,
        mut on_line: impl FnMut(&str),
    ) -> Result<(), StepError> {
        let command_line = self.command_line();
        let step_name = self.name.clone();
        let output_error = |source| StepError::Output {
            step: step_name.clone(),
            command: command_line.clone(),
            source,
        };
        writeln!(log, "### {}\n### $ {}", self.name, command_line).map_err(output_error)?;
        self.command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self.spawn()?;
        let (sender, receiver) = mpsc::channel::<String>();
        let readers = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|stream| {
            let sender = sender.clone();
            thread::spawn(move || forward_lines(stream, sender))
        })
        .collect::<Vec<_>>();
        drop(sender);

        let mut tail = VecDeque::with_capacity(TAIL_LINES);
        let mut write_result = Ok(());
        let mut terminated = false;
        let started = std::time::Instant::now();
        loop {
            let line = match receiver.recv_timeout(INTERRUPT_POLL) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if !terminated && crate::interrupt::requested() {
                        terminate(&child);
                        terminated = true;
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            if write_result.is_ok() {
                write_result = writeln!(log, "[{:>7.1}s] {line}", started.elapsed().as_secs_f64());
            }
            on_line(&line);
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        for reader in readers {
            let _ = reader.join();
        }
        let status = child.wait().map_err(output_error)?;
        write_result.map_err(output_error)?;
        let tail = tail.into_iter().collect::<Vec<_>>().join("\n");
        self.check_status(status, tail)
    }

    /// Starts the program and hands back the child, for callers that
    /// supervise it themselves (a VM under test).
    pub fn spawn_with(
        mut self,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<(Child, StepInfo), StepError> {
        self.command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = self.spawn()?;
        let command = self.command_line();
        Ok((
            child,
            StepInfo {
                name: self.name,
                command,
            },
        ))
    }

    fn spawn(&mut self) -> Result<Child, StepError> {
        self.command.spawn().map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                self.not_installed()
            } else {
                StepError::Spawn {
                    step: self.name.clone(),
                    command: self.command_line(),
                    source,
                }
            }
        })
    }

    fn not_installed(&self) -> StepError {
        StepError::NotInstalled {
            step: self.name.clone(),
            program: self.command.get_program().to_string_lossy().into_owned(),
            hint: self
                .install_hint
                .as_ref()
                .map(|h| format!("; {h}"))
                .unwrap_or_default(),
        }
    }

    fn check_status(&self, status: ExitStatus, tail: String) -> Result<(), StepError> {
        StepInfo {
            name: self.name.clone(),
            command: self.command_line(),
        }
        .check_status(status, tail)
        .map_err(|e| match e {
            StepError::Failed {
                code: 127,
                ref tail,
                ..
            } if names_missing(tail, self.command.get_program()) => self.not_installed(),
            other => other,
        })
    }
}

/// Whether a program that exited with 127 said that `program` itself was
/// not found: a wrapper (`env`, or a script that `exec`s the real program
/// under the same name) that could not find it. Anything else that exits 127 is a plain failure: mkosi passes on
/// the status of a recipe script whose command was not found, and that
/// script's output is what the user needs.
fn names_missing(tail: &str, program: &OsStr) -> bool {
    let Some(wanted) = Path::new(program).file_name() else {
        return false;
    };
    let Some(last) = tail.lines().rev().find(|line| !line.trim().is_empty()) else {
        return false;
    };
    // "sh: 2: exec: /opt/mkosi/bin/mkosi: not found", or
    // "env: 'mkosi': No such file or directory": the missing name is the
    // field before the complaint.
    let Some(named) = ["not found", "No such file or directory"]
        .iter()
        .find_map(|complaint| last.trim_end().strip_suffix(complaint))
        .and_then(|rest| rest.strip_suffix(": "))
        .and_then(|rest| rest.rsplit(": ").next())
    else {
        return false;
    };
    let named = named.trim_matches(['\'', '"', '‘', '’']);
    Path::new(named).file_name() == Some(wanted)
}

/// What is left of a [`Step`] once its child runs: enough to word an error.
#[derive(Debug, Clone)]
pub struct StepInfo {
    pub name: String,
    pub command: String,
}

impl StepInfo {
    /// Turns an exit status into `Ok` or the matching error.
    pub fn check_status(&self, status: ExitStatus, tail: String) -> Result<(), StepError> {
        if status.success() {
            return Ok(());
        }
        if let Some(signal) = status.signal() {
            return Err(StepError::Signal {
                step: self.name.clone(),
                command: self.command.clone(),
                signal,
                signal_name: signal_name(signal),
                tail,
            });
        }
        Err(StepError::Failed {
            step: self.name.clone(),
            command: self.command.clone(),
            code: status.code().unwrap_or(-1),
            tail,
        })
    }
}

impl fmt::Display for StepInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: `{}`", self.name, self.command)
    }
}

/// Asks a child to stop the way a terminal would (SIGTERM), so it can clean
/// up its own temporary files; std can only send SIGKILL.
pub fn terminate(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn forward_lines(stream: impl Read, sender: mpsc::Sender<String>) {
    let mut reader = BufReader::new(stream);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match reader.read_until(b'\n', &mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buffer);
                // Progress bars redraw with carriage returns; keep the last frame.
                let line = line.trim_end_matches(['\n', '\r']);
                let line = line.rsplit('\r').next().unwrap_or_default();
                if sender.send(line.to_owned()).is_err() {
                    return;
                }
            }
        }
    }
}

/// The last `count` lines of `text`.
pub fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

/// Quotes a word for a POSIX shell, only where needed.
pub fn quote(word: &OsStr) -> String {
    let text = word.to_string_lossy();
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c));
    if plain {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Quotes every word of a command line.
pub fn quote_all<S: AsRef<OsStr>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Names of the signals a build is likely to meet.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => "unknown signal",
    }
}

/// Arguments as `OsString`s, for building argument lists from mixed types.
pub fn os_args<I, S>(args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    args.into_iter().map(|a| a.as_ref().to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_leaves_plain_words_alone() {
        assert_eq!(
            quote(OsStr::new("--output-dir=/var/tmp/x")),
            "--output-dir=/var/tmp/x"
        );
        assert_eq!(quote(OsStr::new("two words")), "'two words'");
        assert_eq!(quote(OsStr::new("it's")), r"'it'\''s'");
        assert_eq!(quote(OsStr::new("")), "''");
    }

    #[test]
    fn success_returns_stdout() {
        let out = Step::new("echoing", "sh")
            .args(["-c", "echo hello"])
            .output_text()
            .unwrap();
        assert_eq!(out, "hello\n");
    }

    #[test]
    fn failure_names_step_command_status_and_stderr_tail() {
        let err = Step::new("failing on purpose", "sh")
            .args(["-c", "echo first >&2; echo last words >&2; exit 3"])
            .run()
            .unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, StepError::Failed { code: 3, .. }),
            "{message}"
        );
        assert!(
            message.starts_with("failing on purpose: `sh -c "),
            "{message}"
        );
        assert!(message.contains("last words"), "{message}");
    }

    #[test]
    fn missing_program_is_not_installed_with_hint() {
        let err = Step::new("running a tool", "boxcar-no-such-tool")
            .install_hint("run ci/setup-host")
            .run()
            .unwrap_err();
        assert!(matches!(err, StepError::NotInstalled { .. }));
        assert!(err.to_string().contains("not installed"));
        assert!(err.to_string().contains("run ci/setup-host"));
    }

    #[test]
    fn exit_127_from_a_program_that_ran_is_a_failure_with_its_output() {
        // mkosi exits with the status of a failing recipe script: 127 is
        // then that script's problem, not a missing mkosi.
        let err = Step::new("composing", "python3")
            .args([
                "-c",
                "import sys; print('frobnicate: not found', file=sys.stderr); sys.exit(127)",
            ])
            .install_hint("run ci/setup-host")
            .run()
            .unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, StepError::Failed { code: 127, .. }),
            "{message}"
        );
        assert!(message.contains("frobnicate: not found"), "{message}");
        assert!(!message.contains("not installed"), "{message}");
        let err = Step::new("composing", "python3")
            .args(["-c", "import sys; sys.exit(127)"])
            .run()
            .unwrap_err();
        assert!(matches!(err, StepError::Failed { code: 127, .. }), "{err}");
    }

    #[test]
    fn a_shell_missing_a_command_is_a_failure_not_a_missing_shell() {
        let err = Step::new("running a script", "sh")
            .args(["-c", "boxcar-no-such-command"])
            .run()
            .unwrap_err();
        assert!(matches!(err, StepError::Failed { code: 127, .. }), "{err}");
        assert!(err.to_string().contains("boxcar-no-such-command"), "{err}");
    }

    #[test]
    fn a_wrapper_whose_program_is_gone_is_not_installed() {
        // A shell under the wrapper's name (a link, not a script written
        // here: a script being written cannot be run while another test's
        // fork still holds it open).
        let temp = tempfile::tempdir().unwrap();
        let wrapper = temp.path().join("mkosi");
        std::os::unix::fs::symlink("/bin/sh", &wrapper).unwrap();
        let err = Step::new("composing", &wrapper)
            .args(["-c", "exec /nonexistent/bin/mkosi"])
            .install_hint("run ci/setup-host")
            .run()
            .unwrap_err();
        assert!(matches!(err, StepError::NotInstalled { .. }), "{err}");
        assert!(err.to_string().contains("run ci/setup-host"), "{err}");
    }

    #[test]
    fn only_the_programs_own_name_before_the_complaint_means_missing() {
        let mkosi = OsStr::new("/var/cache/boxcar/mkosi");
        assert!(names_missing(
            "env: 'mkosi': No such file or directory",
            mkosi
        ));
        assert!(names_missing(
            "x\n/c/mkosi: 2: exec: /opt/mkosi: not found\n",
            mkosi
        ));
        assert!(!names_missing(
            "/r/mkosi.postinst: 3: frobnicate: not found",
            mkosi
        ));
        assert!(!names_missing("mkosi: not found\n‣ a later line", mkosi));
        assert!(!names_missing("", mkosi));
    }

    #[test]
    fn signal_is_reported_by_name() {
        let err = Step::new("crashing", "sh")
            .args(["-c", "kill -TERM $$"])
            .run()
            .unwrap_err();
        assert!(matches!(err, StepError::Signal { signal: 15, .. }), "{err}");
        assert!(err.to_string().contains("SIGTERM"));
    }

    #[test]
    fn stdin_and_stdout_files() {
        let temp = tempfile::tempdir().unwrap();
        let input = temp.path().join("in");
        let output = temp.path().join("out");
        std::fs::write(&input, "b\na\n").unwrap();
        Step::new("sorting", "sort")
            .stdin_file(&input)
            .stdout_file(&output)
            .run()
            .unwrap();
        assert_eq!(std::fs::read_to_string(&output).unwrap(), "a\nb\n");
        let err = Step::new("sorting", "sort")
            .stdin_file(temp.path().join("missing"))
            .run()
            .unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn input_is_fed_to_stdin() {
        let temp = tempfile::tempdir().unwrap();
        let output = temp.path().join("out");
        Step::new("counting", "wc")
            .arg("-c")
            .stdout_file(&output)
            .run_with_input(|stdin| stdin.write_all(&[7u8; 100_000]))
            .unwrap();
        assert_eq!(std::fs::read_to_string(&output).unwrap().trim(), "100000");
    }

    #[test]
    fn json_output_is_parsed() {
        #[derive(Debug, serde::Deserialize)]
        struct Answer {
            value: u32,
        }
        let answer: Answer = Step::new("asking", "echo")
            .arg(r#"{"value": 42}"#)
            .json()
            .unwrap();
        assert_eq!(answer.value, 42);
        let err = Step::new("asking", "echo")
            .arg("not json")
            .json::<Answer>()
            .unwrap_err();
        assert!(matches!(err, StepError::Json { .. }));
    }

    #[test]
    fn logged_run_writes_every_line_and_reports_them() {
        let mut log = tempfile::tempfile().unwrap();
        let mut seen = Vec::new();
        Step::new("logging", "sh")
            .args(["-c", "echo out; echo err >&2; printf 'a\\rb\\n'"])
            .run_logged(&mut log, |line| seen.push(line.to_owned()))
            .unwrap();
        seen.sort();
        assert_eq!(seen, ["b", "err", "out"]);
        let mut text = String::new();
        use std::io::Seek;
        log.seek(io::SeekFrom::Start(0)).unwrap();
        log.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("### logging\n### $ sh -c "), "{text}");
        assert!(
            text.contains("s] out\n") && text.contains("s] err\n"),
            "{text}"
        );
    }

    #[test]
    fn logged_failure_carries_the_tail() {
        let mut log = tempfile::tempfile().unwrap();
        let err = Step::new("composing", "sh")
            .args(["-c", "for i in $(seq 1 100); do echo line $i; done; exit 1"])
            .run_logged(&mut log, |_| {})
            .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("line 100") && !message.contains("line 70\n"),
            "{message}"
        );
    }
}
