//! For unit tests that change what a whole process shares (the umask, the
//! interrupt flag): such a test runs again in a child process of its own,
//! the test binary started for that one test, so the tests running beside
//! it in this process never see the change.

use std::process::Command;

/// Set in the child to the name of the test it runs.
const CHILD: &str = "BOXCAR_ISOLATED_TEST";

/// Call first in such a test, with `module_path!()` and the test's name.
/// In the child it returns true: run the test's body. In the parent it
/// runs the child, fails if the child's test failed (or did not run), and
/// returns false: the body already ran there.
pub fn in_own_process(module_path: &str, test: &str) -> bool {
    // libtest names a test by its path without the crate's name.
    let module = module_path.split_once("::").map_or("", |(_, rest)| rest);
    let name = format!("{module}::{test}");
    if std::env::var(CHILD).is_ok_and(|running| running == name) {
        return true;
    }
    let output = Command::new(std::env::current_exe().expect("the test binary"))
        .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, &name)
        .output()
        .expect("starting the test binary again");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{name} failed in its own process:\n{stdout}\n{stderr}"
    );
    false
}
