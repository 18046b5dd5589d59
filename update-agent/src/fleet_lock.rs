//! The FleetLock protocol, as Zincati speaks it, so existing lock servers
//! (airlock, FLUO's) work unchanged: `POST /v1/pre-reboot` before a reboot
//! takes a slot in the host's group, `POST /v1/steady-state` once the new
//! boot is healthy gives it back. Both carry the header
//! `fleet-lock-protocol: true` and the body
//! `{"client_params": {"id": NODE_ID, "group": GROUP}}`; a 200 is yes.

use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::config::{Config, FleetLockConfig};

/// At most this much of a server's answer is read (it explains a refusal).
const ANSWER_LIMIT: usize = 64 * 1024;

pub struct FleetLock {
    base_url: String,
    body: Body,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

#[derive(Serialize)]
struct Body {
    client_params: ClientParams,
}

#[derive(Serialize)]
struct ClientParams {
    id: String,
    group: String,
}

impl FleetLock {
    pub fn new(lock: &FleetLockConfig, node_id: &str, config: &Config) -> Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let timeout = Duration::from_secs(config.agent.read_timeout_seconds.max(1));
        let client = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout * 2)
            .user_agent(concat!("boxcar-update/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("setting up the HTTP client for the fleet lock")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the HTTP runtime")?;
        Ok(Self {
            base_url: lock.base_url.trim_end_matches('/').to_owned(),
            body: Body {
                client_params: ClientParams {
                    id: node_id.to_owned(),
                    group: lock.group.clone(),
                },
            },
            client,
            runtime,
        })
    }

    /// Asks for a reboot slot: `None` when granted, else why not.
    pub fn pre_reboot(&self) -> Result<Option<String>> {
        self.post("/v1/pre-reboot")
    }

    /// Gives the slot back: `None` when the server took it.
    pub fn steady_state(&self) -> Result<Option<String>> {
        self.post("/v1/steady-state")
    }

    fn post(&self, path: &str) -> Result<Option<String>> {
        let url = format!("{}{path}", self.base_url);
        self.runtime.block_on(async {
            let response = self
                .client
                .post(&url)
                .header("fleet-lock-protocol", "true")
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(&self.body).expect("the body serializes"))
                .send()
                .await
                .with_context(|| format!("POST {url}"))?;
            let status = response.status();
            if status.is_success() {
                return Ok(None);
            }
            let mut answer = Vec::new();
            let mut response = response;
            while let Ok(Some(chunk)) = response.chunk().await {
                answer.extend_from_slice(&chunk);
                if answer.len() >= ANSWER_LIMIT {
                    answer.truncate(ANSWER_LIMIT);
                    break;
                }
            }
            let answer = String::from_utf8_lossy(&answer);
            Ok(Some(format!("{status}: {}", explain(&answer))))
        })
    }
}

/// A FleetLock error body is `{"kind": ..., "value": ...}`; anything else
/// is shown as it came, on one line.
fn explain(answer: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Refusal {
        kind: String,
        value: String,
    }
    match serde_json::from_str::<Refusal>(answer) {
        Ok(r) => format!("{} ({})", r.value, r.kind),
        Err(_) => answer.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};

    /// A lock server that refuses the first `refusals` requests, then
    /// grants; returns what it was sent.
    fn lock_server(
        refusals: usize,
        requests: usize,
    ) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for n in 0..requests {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream);
                let mut head = String::new();
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if let Some(v) = line.to_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                seen.push(format!("{}{}", head, String::from_utf8(body).unwrap()));
                let answer = if n < refusals {
                    let body = r#"{"kind":"failed_lock","value":"all slots taken"}"#;
                    format!(
                        "HTTP/1.1 409 Conflict\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n".to_owned()
                };
                reader.get_mut().write_all(answer.as_bytes()).unwrap();
            }
            seen
        });
        (url, handle)
    }

    #[test]
    fn speaks_fleetlock_and_reads_a_refusal() {
        let (url, server) = lock_server(1, 3);
        let mut config = Config::default();
        config.updates.fleet_lock.base_url = url;
        config.updates.fleet_lock.group = "workers".into();
        let lock = FleetLock::new(&config.updates.fleet_lock, "abc123", &config).unwrap();
        let refused = lock.pre_reboot().unwrap().unwrap();
        assert!(
            refused.contains("all slots taken (failed_lock)"),
            "{refused}"
        );
        assert_eq!(lock.pre_reboot().unwrap(), None);
        assert_eq!(lock.steady_state().unwrap(), None);
        let seen = server.join().unwrap();
        assert!(seen[0].starts_with("POST /v1/pre-reboot "), "{}", seen[0]);
        assert!(seen[2].starts_with("POST /v1/steady-state "), "{}", seen[2]);
        for request in &seen {
            assert!(request.to_lowercase().contains("fleet-lock-protocol: true"));
            assert!(
                request.ends_with(r#"{"client_params":{"id":"abc123","group":"workers"}}"#),
                "{request}"
            );
        }
    }
}
