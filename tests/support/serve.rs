//! Spawns real `orderly serve` child processes for tests.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running `orderly serve` child: its process, base URL and the stderr lines seen so far.
pub struct Serve {
    /// The child process.
    pub child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// Its stderr so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Serve {
    /// Kills the child (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `orderly serve` command on Redis `url` under `node_id` with `shards` shards and an
/// optional config file.
pub fn serve_command(url: &str, node_id: &str, shards: u32, config: Option<&Path>) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orderly"));
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            url,
            "--node-id",
            node_id,
        ])
        .env_remove("ORDERLY_LOG")
        .env("ORDERLY__ENGINE__SHARDS", shards.to_string())
        .env("ORDERLY__ENGINE__ARBITERS", "1")
        .env("ORDERLY__API__WORKERS", "1")
        .env("ORDERLY__CLUSTER__LEASE_TTL_MS", "2000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command
}

/// Starts `orderly serve` and waits for its address.
pub fn spawn_serve(url: &str, node_id: &str, shards: u32, config: Option<&Path>) -> Serve {
    spawn_serve_command(serve_command(url, node_id, shards, config))
}

/// Starts a prepared `orderly serve` command (see [`serve_command`]; add settings with
/// `.env("ORDERLY__…", …)`) and waits for its address.
pub fn spawn_serve_command(mut command: Command) -> Serve {
    let mut child = command.spawn().expect("orderly serve starts");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(Vec::new()));
    let lines = Arc::clone(&log);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(address) = line.strip_prefix("listening on ") {
                let _ = tx.send(address.to_string());
            }
            lines.lock().unwrap().push(line);
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("serve prints its address; log: {:?}", log.lock().unwrap()));
    Serve { child, base, log }
}

/// Runs `orderly serve` expecting it to fail at start; answers its stderr.
pub fn serve_fails(url: &str, config: &Path) -> String {
    use std::io::Read;
    let mut child = serve_command(url, "bad-config", 2, Some(config))
        .spawn()
        .expect("orderly serve runs");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve did not refuse the config {}", config.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert!(!status.success(), "serve must refuse the config");
    stderr
}

/// Writes `text` as a config file in `dir`.
pub fn config_file(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}
