//! The `orderly` binary for the tests that drive a real server, and bounded child processes.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Kills the server when the test ends, however it ends.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_bounded(mut child: Child, limit: Duration, what: &str) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// The `orderly` binary, built if needed.
pub fn orderly_binary() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("load-tests is inside the workspace")
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| {
            if t.is_absolute() {
                t
            } else {
                workspace.join(t)
            }
        })
        .unwrap_or_else(|| workspace.join("target"));
    let binary = target.join("debug").join("orderly");
    if !binary.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let build = Command::new(cargo)
            .args(["build", "--bin", "orderly"])
            .current_dir(&workspace)
            .env("CARGO_TARGET_DIR", &target)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cargo build --bin orderly");
        let output = wait_bounded(
            build,
            Duration::from_secs(1800),
            "cargo build --bin orderly",
        );
        assert!(
            output.status.success(),
            "cargo build --bin orderly failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert!(binary.exists(), "no {}", binary.display());
    binary
}

/// Starts `orderly serve` on a free loopback port with `store` (`memory` or a Redis URL) and
/// the `ORDERLY__…` settings in `env` (nothing else from the environment), and returns it
/// with its base URL.
pub fn start_server(store: &str, env: &[(&str, &str)]) -> (Server, String) {
    let mut command = Command::new(orderly_binary());
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--store", store])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // Only the embedded defaults and `env`: no configuration from the test's environment.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ORDERLY__") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    let mut child = command.spawn().expect("start orderly serve");
    let stderr = child.stderr.take().expect("stderr");
    let server = Server(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Keep draining stderr so the server never blocks on a full pipe.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let _ = tx.send(rest.trim().to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("orderly serve prints `listening on http://…` within 60 s");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    (server, url)
}

/// A throw-away `redis-server` on a free loopback port with its own temp dir (AOF everysec),
/// stopped and removed when dropped.
pub struct Redis {
    child: Child,
    dir: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Redis {
    /// Starts one and waits (bounded) until it answers `PING`.
    pub fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir =
            std::env::temp_dir().join(format!("orderly-load-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("redis temp dir");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (is it installed? apt-get install -y redis-server)");
        let redis = Redis { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !redis.answers_ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn answers_ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
