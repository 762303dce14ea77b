//! A real local HTTP webhook receiver for tests: a tiny HTTP/1.1 server on 127.0.0.1:0, on its
//! own thread and runtime, that checks every `Orderly-Signature` with its own HMAC-SHA256
//! (built here from SHA-256, not the engine's code) and records the events it accepted.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How the receiver answers.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// 200 to everything.
    Healthy,
    /// 500 to the first `k` requests, then 200.
    FailFirst(usize),
    /// Reads the request and never answers.
    Hang,
    /// 410 Gone to everything.
    Gone,
}

/// What the receiver saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Requests received.
    pub requests: usize,
    /// Requests whose signature did not verify.
    pub bad_signatures: usize,
    /// Accepted (2xx) event bodies, in arrival order.
    pub accepted: Vec<serde_json::Value>,
}

impl Seen {
    /// The distinct event ids accepted.
    pub fn event_ids(&self) -> BTreeSet<String> {
        self.accepted
            .iter()
            .filter_map(|e| e["event_id"].as_str().map(str::to_string))
            .collect()
    }
}

/// A running receiver.
pub struct Receiver {
    /// Its URL (`http://127.0.0.1:<port>/hook`).
    pub url: String,
    /// What it saw so far.
    pub seen: Arc<Mutex<Seen>>,
}

impl Receiver {
    /// Starts a receiver verifying signatures under `secret`.
    pub fn start(secret: &str, behaviour: Behaviour) -> Receiver {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (tx, rx) = std::sync::mpsc::channel();
        let secret = secret.as_bytes().to_vec();
        let state = Arc::clone(&seen);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("receiver runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind receiver");
                tx.send(listener.local_addr().expect("address"))
                    .expect("send");
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        return;
                    };
                    let secret = secret.clone();
                    let state = Arc::clone(&state);
                    tokio::spawn(serve(socket, secret, state, behaviour));
                }
            });
        });
        let address = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("receiver bound");
        Receiver {
            url: format!("http://{address}/hook"),
            seen,
        }
    }

    /// The distinct event ids accepted so far.
    pub fn event_ids(&self) -> BTreeSet<String> {
        self.seen.lock().unwrap().event_ids()
    }

    /// Waits until `done` holds of what was seen, at most `timeout` (asynchronously: the
    /// engine's tasks may share the caller's thread).
    pub async fn wait_until(&self, timeout: Duration, done: impl Fn(&Seen) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        for _ in 0..10_000 {
            if done(&self.seen.lock().unwrap()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

async fn serve(
    mut socket: tokio::net::TcpStream,
    secret: Vec<u8>,
    state: Arc<Mutex<Seen>>,
    behaviour: Behaviour,
) {
    let mut buffer = Vec::new();
    loop {
        // Head.
        let head_end = loop {
            if let Some(p) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0_u8; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buffer.len() < head_end + length {
            let mut chunk = [0_u8; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buffer[head_end..head_end + length].to_vec();
        buffer.drain(..head_end + length);
        let signed = header("orderly-signature")
            .map(|s| verify(&secret, &s, &body))
            .unwrap_or(false);
        let request_no = {
            let mut seen = state.lock().unwrap();
            seen.requests += 1;
            if !signed {
                seen.bad_signatures += 1;
            }
            seen.requests
        };
        let status = match behaviour {
            Behaviour::Hang => {
                tokio::time::sleep(Duration::from_secs(120)).await;
                return;
            }
            Behaviour::Gone => 410,
            Behaviour::FailFirst(k) if request_no <= k => 500,
            _ if !signed => 401,
            _ => 200,
        };
        if status == 200 {
            let event: serde_json::Value =
                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            state.lock().unwrap().accepted.push(event);
        }
        let response = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
        if socket.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Checks `t=<t>,v1=<hex>` against HMAC-SHA256 of `"<t>.<body>"`.
pub fn verify(secret: &[u8], header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = Some(value.to_string()),
            Some(("v1", value)) => v1 = Some(value.to_string()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let mut message = t.into_bytes();
    message.push(b'.');
    message.extend_from_slice(body);
    let expected: String = hmac_sha256(secret, &message)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    expected == v1
}

/// HMAC (RFC 2104) over SHA-256, written out.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0_u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(message);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}
