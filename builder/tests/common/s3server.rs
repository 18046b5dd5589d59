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
        let port = free_port();
        let child = Process::new(tool("s3s-fs"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs starts (installed by ci/setup-host)");
        Self::started(child, port, dir)
    }

    /// moto's S3 server, logging every request to `requests.log`.
    pub fn moto() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("requests.log")).unwrap();
        let child = Process::new(tool("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("moto_server starts (installed by ci/setup-host)");
        let server = Self::started(child, port, dir);
        // moto keeps no buckets between runs: make the store's.
        let made = Process::new("curl")
            .args(["-sf", "-X", "PUT", &format!("{}/{BUCKET}", server.endpoint)])
            .status()
            .unwrap();
        assert!(made.success(), "creating the bucket on moto");
        server
    }

    fn started(child: Child, port: u16, dir: tempfile::TempDir) -> Self {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the S3 server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
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
        let port = free_port();
        let child = Process::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .arg("--directory")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 serves the directory");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the web server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
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
