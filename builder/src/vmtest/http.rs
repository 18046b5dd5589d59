//! A minimal HTTP/1.1 responder for boot tests, speaking over any reader
//! and writer. qemu's user network runs one `boxcar internal http-serve`
//! per guest connection (`guestfwd=...-cmd:`), connected through stdin and
//! stdout, so no server has to outlive the test or bind a port.
//!
//! It serves two things: named files from one directory (the PXE kernel,
//! initrd and script), and an imitation of the EC2 instance metadata service
//! (IMDSv2: a token from PUT /latest/api/token, then GET with the token).

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
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    close: bool,
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
    };
    if request
        .header("Connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    {
        request.close = true;
    }
    // Discard a body (the IMDS token PUT has an empty one).
    let length: u64 = request
        .header("Content-Length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    io::copy(&mut input.take(length), &mut io::sink())?;
    Ok(Some(request))
}

fn respond(request: &Request, output: &mut impl Write, content: &Content) -> io::Result<()> {
    if let Some(hostname) = &content.imds_hostname {
        if let Some(path) = imds_path(&request.path) {
            return respond_imds(request, path, output, hostname, content);
        }
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
        401 => "Unauthorized",
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
            imds_hostname: None,
            imds_user_data: None,
        };
        let out = exchange("GET /kernel HTTP/1.1\r\n\r\nGET /secret HTTP/1.1\r\n\r\nGET /../kernel HTTP/1.0\r\n\r\n", &content);
        assert!(
            out.starts_with("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n"),
            "{out}"
        );
        assert!(out.contains("\r\n\r\nKERNELHTTP/1.1 404"), "{out}");
        assert_eq!(out.matches("404 Not Found").count(), 2, "{out}");
    }
}
