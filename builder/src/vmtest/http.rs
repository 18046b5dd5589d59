//! A minimal HTTP/1.1 responder for boot tests, speaking over any reader
//! and writer. qemu's user network runs one `boxcar internal http-serve`
//! per guest connection (`guestfwd=...-cmd:`), connected through stdin and
//! stdout, so no server has to outlive the test or bind a port.
//!
//! It serves four things: named files from one directory (the PXE kernel,
//! initrd and script); an imitation of the EC2 instance metadata service
//! (IMDSv2: a token from PUT /latest/api/token, then GET with the token);
//! a release store's tree, with range requests (what a node's update agent
//! reads); and a FleetLock server that refuses the first reboot requests
//! and logs every request it gets.

use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::path::PathBuf;

/// The token the imitation IMDS hands out and then requires.
pub const IMDS_TOKEN: &str = "boxcar-test-imds-token";

/// The region the imitation instance says it runs in.
const IMDS_REGION: &str = "us-east-1";

/// What the responder serves.
#[derive(Clone, Debug, Default)]
pub struct Content {
    /// Directory of the files.
    pub dir: Option<PathBuf>,
    /// The file names that may be fetched (nothing else is).
    pub files: Vec<String>,
    /// The EC2 local-hostname to serve, when imitating IMDS.
    pub imds_hostname: Option<String>,
    /// The instance's user data (an Ignition config), when imitating IMDS.
    pub imds_user_data: Option<PathBuf>,
    /// A directory whose whole tree is served (release stores).
    pub store: Option<PathBuf>,
    /// Act as a FleetLock server.
    pub fleet_lock: Option<FleetLockServer>,
}

/// A FleetLock server for tests: it refuses the first `refusals`
/// pre-reboot requests, grants the rest, and appends each request to `log`
/// as a JSON line (one process runs per connection; the log is its memory).
#[derive(Clone, Debug)]
pub struct FleetLockServer {
    pub log: PathBuf,
    pub refusals: u32,
}

/// One line of the FleetLock server's log.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LockRequest {
    pub at: String,
    pub path: String,
    pub protocol_header: bool,
    pub id: String,
    pub group: String,
    pub granted: bool,
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    close: bool,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Answers requests from `input` on `output` until the peer closes or asks
/// to close.
pub fn serve_connection(
    input: &mut impl BufRead,
    output: &mut impl Write,
    content: &Content,
) -> io::Result<()> {
    while let Some(request) = read_request(input)? {
        respond(&request, output, content)?;
        output.flush()?;
        if request.close {
            break;
        }
    }
    Ok(())
}

fn read_request(input: &mut impl BufRead) -> io::Result<Option<Request>> {
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut words = line.split_whitespace();
    let (Some(method), Some(path), version) = (words.next(), words.next(), words.next()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad request line {line:?}"),
        ));
    };
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if input.read_line(&mut header)? == 0 {
            break;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    let mut request = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        headers,
        close: version != Some("HTTP/1.1"),
        body: Vec::new(),
    };
    if request
        .header("Connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    {
        request.close = true;
    }
    // Keep a small body (a FleetLock request); discard the rest.
    let length: u64 = request
        .header("Content-Length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    input
        .take(length.min(64 * 1024))
        .read_to_end(&mut request.body)?;
    io::copy(
        &mut input.take(length.saturating_sub(64 * 1024)),
        &mut io::sink(),
    )?;
    Ok(Some(request))
}

fn respond(request: &Request, output: &mut impl Write, content: &Content) -> io::Result<()> {
    if let Some(hostname) = &content.imds_hostname {
        if let Some(path) = imds_path(&request.path) {
            return respond_imds(request, path, output, hostname, content);
        }
    }
    if let Some(lock) = &content.fleet_lock {
        return respond_fleet_lock(request, output, lock);
    }
    if let Some(store) = &content.store {
        return respond_store(request, output, store);
    }
    let name = request.path.trim_start_matches('/');
    let known = content.files.iter().any(|f| f == name);
    if let (true, Some(dir), "GET" | "HEAD") = (known, &content.dir, request.method.as_str()) {
        let mut file = File::open(dir.join(name))?;
        let length = file.metadata()?.len();
        write_head(output, request, 200, length)?;
        if request.method == "GET" {
            io::copy(&mut file, output)?;
        }
        return Ok(());
    }
    reply(output, request, 404, b"not found")
}

/// A file of the store's tree, whole or from `Range: bytes=N-`. Paths
/// with `..`, hidden names or anything but a regular file are not found.
fn respond_store(
    request: &Request,
    output: &mut impl Write,
    store: &std::path::Path,
) -> io::Result<()> {
    let path = request.path.trim_start_matches('/');
    let safe = !path.is_empty()
        && path
            .split('/')
            .all(|part| !part.is_empty() && !part.starts_with('.'));
    let file = store.join(path);
    let regular = std::fs::symlink_metadata(&file).is_ok_and(|m| m.is_file());
    if !safe || !regular || !matches!(request.method.as_str(), "GET" | "HEAD") {
        return reply(output, request, 404, b"not found");
    }
    let mut file = File::open(file)?;
    let length = file.metadata()?.len();
    let from = request
        .header("Range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|&n| n < length);
    match from {
        Some(from) => {
            write_head(output, request, 206, length - from)?;
            if request.method == "GET" {
                use std::io::Seek;
                file.seek(io::SeekFrom::Start(from))?;
                io::copy(&mut file, output)?;
            }
        }
        None => {
            write_head(output, request, 200, length)?;
            if request.method == "GET" {
                io::copy(&mut file, output)?;
            }
        }
    }
    Ok(())
}

/// FleetLock: `POST /v1/pre-reboot` and `/v1/steady-state` with the
/// protocol header and `{"client_params": {"id", "group"}}`.
fn respond_fleet_lock(
    request: &Request,
    output: &mut impl Write,
    lock: &FleetLockServer,
) -> io::Result<()> {
    #[derive(serde::Deserialize)]
    struct Body {
        client_params: Params,
    }
    #[derive(serde::Deserialize)]
    struct Params {
        id: String,
        group: String,
    }
    let known = ["/v1/pre-reboot", "/v1/steady-state"].contains(&request.path.as_str());
    let Ok(body) = serde_json::from_slice::<Body>(&request.body) else {
        return reply(
            output,
            request,
            400,
            br#"{"kind":"bad_request","value":"no client_params"}"#,
        );
    };
    if request.method != "POST" || !known {
        return reply(output, request, 404, b"not found");
    }
    let earlier = std::fs::read_to_string(&lock.log).unwrap_or_default();
    let pre_reboots = earlier
        .lines()
        .filter(|l| l.contains("\"path\":\"/v1/pre-reboot\""))
        .count();
    let granted = request.path != "/v1/pre-reboot" || pre_reboots >= lock.refusals as usize;
    let line = LockRequest {
        at: crate::units::now_rfc3339(),
        path: request.path.clone(),
        protocol_header: request
            .header("fleet-lock-protocol")
            .is_some_and(|v| v == "true"),
        id: body.client_params.id,
        group: body.client_params.group,
        granted,
    };
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&lock.log)?;
    writeln!(log, "{}", serde_json::to_string(&line)?)?;
    if granted {
        reply(output, request, 200, b"")
    } else {
        reply(
            output,
            request,
            409,
            br#"{"kind":"failed_lock","value":"semaphore currently held (test refusal)"}"#,
        )
    }
}

/// The path under an IMDS API version: EC2 serves `/latest/...` and the same
/// under each dated version (`/2019-10-01/...`, which Ignition asks for).
fn imds_path(path: &str) -> Option<&str> {
    let (version, rest) = path.strip_prefix('/')?.split_once('/')?;
    let dated = version.len() == 10
        && version.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    (version == "latest" || dated).then_some(rest)
}

/// The instance metadata service, IMDSv2 only: a session token from a PUT,
/// then every GET must carry it.
fn respond_imds(
    request: &Request,
    path: &str,
    output: &mut impl Write,
    hostname: &str,
    content: &Content,
) -> io::Result<()> {
    if (request.method.as_str(), path) == ("PUT", "api/token") {
        return reply(output, request, 200, IMDS_TOKEN.as_bytes());
    }
    if request.method != "GET" {
        return reply(output, request, 405, b"method not allowed");
    }
    if request.header("X-aws-ec2-metadata-token") != Some(IMDS_TOKEN) {
        return reply(output, request, 401, b"missing or wrong token");
    }
    match path {
        "meta-data/local-hostname" => reply(output, request, 200, hostname.as_bytes()),
        "dynamic/instance-identity/document" => {
            let document = serde_json::json!({
                "region": IMDS_REGION,
                "availabilityZone": format!("{IMDS_REGION}a"),
                "instanceId": "i-0b0c0a0r0t0e0s0t0",
                "architecture": "x86_64",
            });
            reply(output, request, 200, document.to_string().as_bytes())
        }
        // EC2 answers 404 for an instance launched without user data.
        "user-data" => match &content.imds_user_data {
            Some(path) => reply(output, request, 200, &std::fs::read(path)?),
            None => reply(output, request, 404, b"not found"),
        },
        _ => reply(output, request, 404, b"not found"),
    }
}

fn reply(output: &mut impl Write, request: &Request, status: u16, body: &[u8]) -> io::Result<()> {
    write_head(output, request, status, body.len() as u64)?;
    if request.method != "HEAD" {
        output.write_all(body)?;
    }
    Ok(())
}

fn write_head(
    output: &mut impl Write,
    request: &Request,
    status: u16,
    length: u64,
) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        409 => "Conflict",
        _ => "Not Found",
    };
    let connection = if request.close { "close" } else { "keep-alive" };
    write!(
        output,
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {length}\r\nContent-Type: application/octet-stream\r\nConnection: {connection}\r\n\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(requests: &str, content: &Content) -> String {
        let mut input = io::Cursor::new(requests.as_bytes().to_vec());
        let mut output = Vec::new();
        serve_connection(&mut input, &mut output, content).unwrap();
        String::from_utf8(output).unwrap()
    }

    #[test]
    fn imds_needs_the_token() {
        let content = Content {
            imds_hostname: Some("ip-10-0-2-15.test".into()),
            imds_user_data: None,
            ..Content::default()
        };
        let out = exchange(
            "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 300\r\nContent-Length: 0\r\n\r\n\
             GET /latest/meta-data/local-hostname HTTP/1.1\r\n\r\n\
             GET /latest/meta-data/local-hostname HTTP/1.1\r\nX-aws-ec2-metadata-token: boxcar-test-imds-token\r\nConnection: close\r\n\r\n",
            &content,
        );
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains(IMDS_TOKEN));
        assert!(out.contains("HTTP/1.1 401 Unauthorized"));
        assert!(out.ends_with("\r\n\r\nip-10-0-2-15.test"), "{out}");
    }

    #[test]
    fn imds_serves_user_data_and_identity_under_dated_versions() {
        let dir = tempfile::tempdir().unwrap();
        let user_data = dir.path().join("config.ign");
        std::fs::write(&user_data, b"{\"ignition\":{}}").unwrap();
        let content = Content {
            imds_hostname: Some("ip-10-0-2-15.test".into()),
            imds_user_data: Some(user_data),
            ..Content::default()
        };
        let token = "X-aws-ec2-metadata-token: boxcar-test-imds-token";
        let out = exchange(
            &format!(
                "GET /2019-10-01/user-data HTTP/1.1\r\n{token}\r\n\r\n\
                 GET /latest/dynamic/instance-identity/document HTTP/1.1\r\n{token}\r\n\r\n\
                 GET /2019-10-01/user-data HTTP/1.1\r\n\r\n\
                 GET /1.0-x/user-data HTTP/1.1\r\n{token}\r\nConnection: close\r\n\r\n"
            ),
            &content,
        );
        assert!(out.contains("\r\n\r\n{\"ignition\":{}}"), "{out}");
        assert!(out.contains("\"region\":\"us-east-1\""), "{out}");
        assert!(out.contains("HTTP/1.1 401 Unauthorized"), "{out}");
        assert!(out.ends_with("\r\n\r\nnot found"), "{out}");
        assert_eq!(imds_path("/2019-10-01/user-data"), Some("user-data"));
        assert_eq!(imds_path("/latest/api/token"), Some("api/token"));
        assert_eq!(imds_path("/config.ign"), None);
        assert_eq!(imds_path("/2019-1-001/user-data"), None);
    }

    #[test]
    fn serves_only_listed_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kernel"), b"KERNEL").unwrap();
        std::fs::write(dir.path().join("secret"), b"no").unwrap();
        let content = Content {
            dir: Some(dir.path().to_owned()),
            files: vec!["kernel".into()],
            ..Content::default()
        };
        let out = exchange("GET /kernel HTTP/1.1\r\n\r\nGET /secret HTTP/1.1\r\n\r\nGET /../kernel HTTP/1.0\r\n\r\n", &content);
        assert!(
            out.starts_with("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n"),
            "{out}"
        );
        assert!(out.contains("\r\n\r\nKERNELHTTP/1.1 404"), "{out}");
        assert_eq!(out.matches("404 Not Found").count(), 2, "{out}");
    }

    #[test]
    fn serves_a_store_tree_with_ranges_and_nothing_outside_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("store/releases/1")).unwrap();
        std::fs::write(dir.path().join("store/releases/1/usr.zst"), b"0123456789").unwrap();
        std::fs::write(dir.path().join("secret"), b"no").unwrap();
        let content = Content {
            store: Some(dir.path().join("store")),
            ..Content::default()
        };
        let out = exchange(
            "GET /releases/1/usr.zst HTTP/1.1\r\nRange: bytes=4-\r\n\r\n\
             GET /../secret HTTP/1.1\r\n\r\nGET /releases HTTP/1.1\r\nConnection: close\r\n\r\n",
            &content,
        );
        assert!(
            out.starts_with("HTTP/1.1 206 Partial Content\r\nContent-Length: 6\r\n"),
            "{out}"
        );
        assert!(out.contains("\r\n\r\n456789HTTP/1.1 404"), "{out}");
        assert_eq!(out.matches("404 Not Found").count(), 2, "{out}");
    }

    #[test]
    fn the_lock_server_refuses_first_then_grants_and_logs() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("lock.log");
        let content = Content {
            fleet_lock: Some(FleetLockServer {
                log: log.clone(),
                refusals: 1,
            }),
            ..Content::default()
        };
        let body = r#"{"client_params":{"id":"n1","group":"default"}}"#;
        let post = |path: &str| {
            format!(
                "POST {path} HTTP/1.1\r\nfleet-lock-protocol: true\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        };
        assert!(exchange(&post("/v1/pre-reboot"), &content).starts_with("HTTP/1.1 409"));
        assert!(exchange(&post("/v1/pre-reboot"), &content).starts_with("HTTP/1.1 200"));
        assert!(exchange(&post("/v1/steady-state"), &content).starts_with("HTTP/1.1 200"));
        let lines: Vec<LockRequest> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let seen: Vec<(&str, bool)> = lines.iter().map(|l| (l.path.as_str(), l.granted)).collect();
        assert_eq!(
            seen,
            [
                ("/v1/pre-reboot", false),
                ("/v1/pre-reboot", true),
                ("/v1/steady-state", true)
            ]
        );
        assert!(lines
            .iter()
            .all(|l| l.protocol_header && l.id == "n1" && l.group == "default"));
    }
}
