//! Writing a shell script that a test then runs. Shared by the unit tests
//! and, through `#[path]`, the integration tests' common module.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Writes `text` as an executable at `path` through `install`, so that the
/// test process never holds it open for writing: a child another test
/// thread forks in that moment would keep the descriptor until its exec,
/// and running the script would fail with "Text file busy".
pub fn write_script(path: &Path, text: &str) {
    let mut install = Command::new("install")
        .args(["-m", "0755", "/dev/stdin"])
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()
        .expect("running install");
    let mut stdin = install.stdin.take().expect("install's stdin");
    stdin
        .write_all(text.as_bytes())
        .expect("writing to install");
    drop(stdin);
    let status = install.wait().expect("waiting for install");
    assert!(status.success(), "install {}: {status}", path.display());
}
