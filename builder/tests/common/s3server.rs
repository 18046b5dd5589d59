//! S3 servers started on loopback for tests: s3s-fs (objects on disk,
//! authentication on) and moto (AWS's semantics), both installed pinned by
//! ci/setup-host; and a plain web server over a directory. Shared by the
//! CLI tests (builder/tests/) and the end-to-end suite (tests/, which
//! includes this file by path).
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "boxcar-test";
pub const SECRET_KEY: &str = "boxcar-test-secret";
pub const BUCKET: &str = "boxcar";

/// A server the test started; killed when dropped.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
    /// Where the server logs requests (moto) or keeps its objects (s3s-fs).
    pub dir: tempfile::TempDir,
}

impl S3Server {
    /// s3s-fs with authentication, keeping objects under a temporary
    /// directory (the bucket is a directory there, each object a file).
    pub fn s3s_fs() -> Self {
        Self::s3s_fs_in(&std::env::temp_dir())
    }

    /// The same, its temporary directory made in `parent` (so its object
    /// tree can be moved out by a rename).
    pub fn s3s_fs_in(parent: &Path) -> Self {
        let dir = tempfile::tempdir_in(parent).unwrap();
        std::fs::create_dir(dir.path().join(BUCKET)).unwrap();
        let (child, port) = listening("s3s-fs", |port| {
            let mut command = Process::new(tool("s3s-fs"));
            command
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            command
        });
        Self::started(child, port, dir)
    }

    /// moto's S3 server, logging every request to `requests.log`.
    pub fn moto() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("requests.log");
        let (child, port) = listening("moto_server", |port| {
            let mut command = Process::new(tool("moto_server"));
            command
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap());
            command
        });
        let server = Self::started(child, port, dir);
        server.make_bucket();
        server
    }

    /// moto keeps no buckets between runs: make the store's, asking again
    /// a few times because a loaded machine can make moto's first answer
    /// an error.
    fn make_bucket(&self) {
        let url = format!("{}/{BUCKET}", self.endpoint);
        let mut answers = Vec::new();
        for _ in 0..5 {
            let made = Process::new("curl")
                .args([
                    "-sS",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-X",
                    "PUT",
                    &url,
                ])
                .output()
                .unwrap();
            let answer = String::from_utf8_lossy(&made.stdout).into_owned();
            if made.status.success() && answer == "200" {
                return;
            }
            answers.push(format!(
                "{answer} {}",
                String::from_utf8_lossy(&made.stderr).trim()
            ));
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("creating the bucket on moto: answered {answers:?}");
    }

    fn started(child: Child, port: u16, dir: tempfile::TempDir) -> Self {
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    pub fn requests(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("requests.log")).unwrap_or_default()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A program ci/setup-host installs into the cache's bin directory.
pub fn tool(name: &str) -> PathBuf {
    let cache = std::env::var_os("BOXCAR_CACHE_DIR").unwrap_or_else(|| "/var/cache/boxcar".into());
    let path = Path::new(&cache).join("bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run ci/setup-host (make test does)",
        path.display()
    );
    path
}

/// Starts the server `command` makes for a port and waits until it listens
/// there. A port found free can be taken again before the server binds it
/// (by another test's server, or as a client's local port), and such a
/// server exits: then it starts again on another port.
fn listening(name: &str, command: impl Fn(u16) -> Process) -> (Child, u16) {
    for _ in 0..5 {
        let port = free_port();
        let mut child = command(port)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts (installed by ci/setup-host): {e}"));
        if listens(&mut child, port, name) {
            return (child, port);
        }
    }
    panic!("{name} found no free port in five tries");
}

/// Whether `child` came to listen on `port`, rather than exiting; a
/// connection alone could reach another server that holds the port, so
/// the child must still be running a moment after it.
fn listens(child: &mut Child, port: u16, name: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            std::thread::sleep(Duration::from_millis(300));
            return child.try_wait().unwrap().is_none();
        }
        assert!(Instant::now() < deadline, "{name} did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl S3Server {
    /// The environment a boxcar writing to this server needs.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
        ]
    }

    /// Where s3s-fs keeps the object at `key` of the bucket.
    pub fn object_file(&self, key: &str) -> PathBuf {
        self.dir.path().join(BUCKET).join(key)
    }
}

/// A plain web server over a directory of files, no credentials: a
/// directory store served as static files, or a bucket as its website
/// endpoint (or a CDN in front of it) serves it. Stopped when dropped.
pub struct Website {
    child: Child,
    /// `http://127.0.0.1:PORT`, the directory's root.
    pub url: String,
}

impl S3Server {
    /// The bucket's website: a web server over the tree s3s-fs keeps.
    pub fn website(&self) -> Website {
        Website::serve(&self.dir.path().join(BUCKET))
    }
}

impl Website {
    pub fn serve(dir: &Path) -> Self {
        let (child, port) = listening("python3 -m http.server", |port| {
            let mut command = Process::new("python3");
            command
                .args(["-m", "http.server", "--bind", "127.0.0.1"])
                .arg(port.to_string())
                .arg("--directory")
                .arg(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            command
        });
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Website {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
