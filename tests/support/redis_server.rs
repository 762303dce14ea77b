//! Starts real, throw-away `redis-server` processes for integration tests.
//!
//! Each [`RedisServer`] runs `redis-server` from `PATH` on a free port
//! bound to `127.0.0.1` only, with its own temporary data directory and AOF
//! turned on. It never uses the shared Redis on port 6379. Data survives
//! [`RedisServer::restart`] and [`RedisServer::kill9`] followed by
//! [`RedisServer::start_again`], because the process comes back on the
//! same port with the same directory. Dropping the value kills the process
//! and deletes the directory.
//!
//! The harness does not use the `redis` crate. [`RedisServer::command`]
//! talks raw RESP2 over a fresh `std::net::TcpStream` and returns a
//! [`RespValue`]. Code under test connects through [`RedisServer::url`].
//!
//! Every wait is limited by both a time budget and an iteration count. If a
//! server cannot start, the panic message includes its log.
//!
//! ```ignore
//! mod support;
//! use support::redis_server::{RedisOptions, RedisServer};
//!
//! let mut redis = RedisServer::start();
//! assert!(redis.command(&["SET", "k", "v"]).is_ok());
//! redis.kill9();
//! redis.start_again();
//! assert_eq!(redis.command(&["GET", "k"]).as_str(), Some("v"));
//! ```

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The only interface the harness binds to or connects to.
const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Port of the machine's shared Redis; never handed out.
const SHARED_REDIS_PORT: u16 = 6379;

/// How long a freshly spawned server may take to answer `PING` with `+PONG`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between readiness probes.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Iteration cap for the readiness loop (the time budget normally ends it first).
const MAX_READY_POLLS: u32 = 1_000;
/// Connect/read budget of a single readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Fresh ports tried by [`RedisServer::start_with`] before giving up.
const PORT_ATTEMPTS: u32 = 5;
/// Attempts to get a port other than 6379 out of the OS.
const MAX_FREE_PORT_DRAWS: u32 = 10;

/// How long [`RedisServer::start_again`] keeps trying to rebind the old port.
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between rebind attempts.
const REBIND_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Iteration cap for the rebind loop.
const MAX_REBIND_ATTEMPTS: u32 = 200;

/// How long a graceful `SHUTDOWN` may take before the process is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between exit checks after `SHUTDOWN`.
const SHUTDOWN_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Iteration cap for the shutdown wait loop.
const MAX_SHUTDOWN_POLLS: u32 = 1_000;

/// Connect, read and write timeout of [`RedisServer::command`].
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Maximum nesting depth accepted by the RESP parser.
const MAX_RESP_DEPTH: usize = 32;
/// Largest bulk string accepted by the RESP parser.
const MAX_BULK_LEN: usize = 64 * 1024 * 1024;
/// Largest array accepted by the RESP parser.
const MAX_ARRAY_LEN: usize = 1_000_000;
/// Longest RESP header line (type byte + length / simple string) accepted.
const MAX_LINE_LEN: u64 = 64 * 1024;
/// Bytes of log kept at the end of panic messages.
const LOG_TAIL_BYTES: usize = 16 * 1024;

/// Settings for [`RedisServer::start_with`].
///
/// ```ignore
/// let opts = RedisOptions { appendfsync: "everysec", ..RedisOptions::default() };
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisOptions {
    /// Value for `--appendfsync`: `"always"`, `"everysec"` or `"no"`.
    /// Defaults to `"always"`, so a `kill -9` never loses a write the
    /// server has acknowledged.
    pub appendfsync: &'static str,
    /// Extra command-line arguments appended after the harness's own, e.g.
    /// `vec!["--maxmemory".into(), "10mb".into()]`. Later arguments win, so
    /// these can override the defaults. Overriding `--port`, `--bind`,
    /// `--dir` or `--logfile` breaks the harness.
    pub extra_args: Vec<String>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            appendfsync: "always",
            extra_args: Vec::new(),
        }
    }
}

/// One `redis-server` child process owned by a test.
///
/// Data lives in a private temporary directory with AOF on. The server
/// keeps its port and directory across [`restart`](Self::restart),
/// [`stop`](Self::stop) + [`start_again`](Self::start_again) and
/// [`kill9`](Self::kill9) + [`start_again`](Self::start_again).
/// Dropping the value kills the process (SIGKILL) and deletes the directory.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    options: RedisOptions,
    dir: TempDir,
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("pid", &self.pid())
            .field("dir", &self.dir.path())
            .field("options", &self.options)
            .finish()
    }
}

/// Why one launch attempt failed.
enum LaunchError {
    /// `redis-server` could not be executed at all.
    Spawn(io::Error),
    /// The process exited because the port was taken.
    PortInUse(ExitStatus),
    /// The process exited for another reason.
    Exited(ExitStatus),
    /// The process stayed up but did not answer `+PONG` in time.
    NotReady,
}

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaunchError::Spawn(e) if e.kind() == io::ErrorKind::NotFound => {
                write!(f, "`redis-server` was not found on PATH ({e})")
            }
            LaunchError::Spawn(e) => write!(f, "failed to spawn `redis-server`: {e}"),
            LaunchError::PortInUse(status) => {
                write!(
                    f,
                    "redis-server could not bind its port and exited ({status})"
                )
            }
            LaunchError::Exited(status) => {
                write!(f, "redis-server exited before becoming ready ({status})")
            }
            LaunchError::NotReady => write!(
                f,
                "redis-server did not answer PING with +PONG within {READY_TIMEOUT:?}"
            ),
        }
    }
}

impl RedisServer {
    /// Starts a server with [`RedisOptions::default`] (`appendfsync always`).
    /// Panics, with the server log, if it cannot be started.
    pub fn start() -> RedisServer {
        RedisServer::start_with(RedisOptions::default())
    }

    /// Starts a server with `options` on a free `127.0.0.1` port and a new
    /// temporary directory, and blocks until it answers `PING`.
    ///
    /// If Redis cannot bind the port (another process took it after the
    /// harness picked it), a new port is tried, up to 5 times. Panics, with
    /// the server log, if the server still does not come up.
    pub fn start_with(options: RedisOptions) -> RedisServer {
        assert!(
            matches!(options.appendfsync, "always" | "everysec" | "no"),
            "RedisOptions::appendfsync must be \"always\", \"everysec\" or \"no\", got {:?}",
            options.appendfsync
        );
        let dir = tempfile::Builder::new()
            .prefix("orderly-redis-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for redis-server: {e}"));
        let mut server = RedisServer {
            child: None,
            port: 0,
            options,
            dir,
        };
        let mut failures = Vec::new();
        for attempt in 1..=PORT_ATTEMPTS {
            server.port = free_port();
            match server.launch() {
                Ok(()) => return server,
                Err(LaunchError::PortInUse(status)) => failures.push(format!(
                    "attempt {attempt}: port {} already in use ({status})",
                    server.port
                )),
                Err(other) => panic!("{}", server.failure_report(&other.to_string())),
            }
        }
        panic!(
            "{}",
            server.failure_report(&format!(
                "redis-server could not bind a free port in {PORT_ATTEMPTS} attempts: {}",
                failures.join("; ")
            ))
        )
    }

    /// The TCP port the server listens on (on 127.0.0.1). It does not
    /// change across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connection URL for the `redis` crate, e.g. `redis://127.0.0.1:41234/`.
    pub fn url(&self) -> String {
        format!("redis://{LOOPBACK}:{}/", self.port)
    }

    /// The server's data directory (`--dir`). Holds the AOF and the logs.
    /// It is deleted when the `RedisServer` is dropped.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the Redis log file (`--logfile`), inside [`dir`](Self::dir).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The Redis log followed by anything the process wrote to
    /// stdout/stderr, across all launches. Meant for assertion messages.
    pub fn logs(&self) -> String {
        let log = fs::read_to_string(self.log_path()).unwrap_or_default();
        let stdio = fs::read_to_string(self.stdio_log_path()).unwrap_or_default();
        if stdio.is_empty() {
            log
        } else {
            format!("{log}\n--- stdout/stderr ---\n{stdio}")
        }
    }

    /// The options the server was started with.
    pub fn options(&self) -> &RedisOptions {
        &self.options
    }

    /// OS process id of the current `redis-server` child, or `None` if the
    /// harness has stopped or killed it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the child process is alive. If it has exited on its own, it is
    /// reaped and forgotten, so [`start_again`](Self::start_again) can
    /// be called.
    pub fn is_running(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(_)) | Err(_) => {
                self.child = None;
                false
            }
        }
    }

    /// Sends one command as a RESP array of bulk strings over a new
    /// connection and returns the parsed reply. A Redis error reply is
    /// returned as [`RespValue::Error`], not a panic.
    ///
    /// Panics if the server cannot be reached or the reply cannot be read
    /// within [`COMMAND_TIMEOUT`]. Use [`try_command`](Self::try_command)
    /// when failure is expected, e.g. while the server is down.
    ///
    /// ```ignore
    /// assert!(redis.command(&["CLIENT", "PAUSE", "1000", "WRITE"]).is_ok());
    /// let n = redis.command(&["DBSIZE"]).as_int().unwrap();
    /// ```
    pub fn command(&self, args: &[&str]) -> RespValue {
        self.try_command(args).unwrap_or_else(|e| {
            panic!(
                "redis command {args:?} on 127.0.0.1:{} failed: {e}",
                self.port
            )
        })
    }

    /// Like [`command`](Self::command), but returns an I/O error (connection
    /// refused, timeout, malformed reply) instead of panicking.
    pub fn try_command(&self, args: &[&str]) -> io::Result<RespValue> {
        send_command(self.port, args, COMMAND_TIMEOUT)
    }

    /// Kills the process with SIGKILL (`Child::kill` on Unix) and waits for
    /// it to exit. No shutdown work runs. What survives depends on
    /// `appendfsync`: with `always`, every acknowledged write survives. Does
    /// nothing if the server is not running. Bring it back with
    /// [`start_again`](Self::start_again).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // kill() fails only if the child was already reaped; fine either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server gracefully: sends `SHUTDOWN` (Redis fsyncs the AOF
    /// and exits), waits up to 10 s, then falls back to SIGKILL. Keeps the
    /// port and directory, so [`start_again`](Self::start_again) brings the
    /// data back. Does nothing if the server is not running.
    pub fn stop(&mut self) {
        if !self.is_running() {
            return;
        }
        // On success Redis closes the connection without replying, so an
        // error here is expected. An error *reply* (e.g. while a write pause
        // is active) is handled by the bounded wait and SIGKILL below.
        let _ = send_command(self.port, &["SHUTDOWN"], COMMAND_TIMEOUT);
        let Some(mut child) = self.child.take() else {
            return;
        };
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        for _ in 0..MAX_SHUTDOWN_POLLS {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => {}
            }
            if Instant::now() >= deadline {
                break;
            }
            thread::sleep(SHUTDOWN_POLL_INTERVAL);
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Graceful restart: [`stop`](Self::stop), then
    /// [`start_again`](Self::start_again) on the same port and directory.
    /// Data written before the restart is reloaded from the AOF.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Starts the server again after [`kill9`](Self::kill9) or
    /// [`stop`](Self::stop), on the **same** port and directory, so
    /// existing URLs still work and the AOF is reloaded. Blocks until the
    /// server answers `PING`.
    ///
    /// Panics if the server is still running, if the port cannot be bound
    /// again within 5 s, or if the server does not become ready.
    pub fn start_again(&mut self) {
        assert!(
            !self.is_running(),
            "start_again() called while redis-server (pid {:?}) on 127.0.0.1:{} is still \
             running; call stop() or kill9() first",
            self.pid(),
            self.port
        );
        let deadline = Instant::now() + REBIND_TIMEOUT;
        let mut last_problem = String::from("no attempt made");
        for _ in 0..MAX_REBIND_ATTEMPTS {
            if port_is_free(self.port) {
                match self.launch() {
                    Ok(()) => return,
                    Err(LaunchError::PortInUse(status)) => {
                        last_problem = format!("redis-server failed to bind ({status})");
                    }
                    Err(other) => panic!("{}", self.failure_report(&other.to_string())),
                }
            } else {
                last_problem = "another socket still holds the port".to_string();
            }
            if Instant::now() >= deadline {
                break;
            }
            thread::sleep(REBIND_POLL_INTERVAL);
        }
        panic!(
            "{}",
            self.failure_report(&format!(
                "could not bind redis-server to the same port 127.0.0.1:{} again within \
                 {REBIND_TIMEOUT:?} ({last_problem})",
                self.port
            ))
        )
    }

    fn stdio_log_path(&self) -> PathBuf {
        self.dir.path().join("redis.stdio.log")
    }

    /// Spawns `redis-server` on `self.port` and waits until it is ready.
    /// On failure the child is gone and `self.child` is `None`.
    fn launch(&mut self) -> Result<(), LaunchError> {
        let log_offset = file_len(&self.log_path());
        let stdio_offset = file_len(&self.stdio_log_path());
        let child = self.spawn().map_err(LaunchError::Spawn)?;
        self.child = Some(child);
        let result = self.wait_ready(log_offset, stdio_offset);
        if result.is_err() {
            self.kill9();
        }
        result
    }

    fn spawn(&self) -> io::Result<Child> {
        let stdout = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.stdio_log_path())?;
        let stderr = stdout.try_clone()?;
        Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--appendonly", "yes"])
            .args(["--appendfsync", self.options.appendfsync])
            .args(["--save", ""])
            .args(["--daemonize", "no"])
            .arg("--logfile")
            .arg(self.log_path())
            .args(["--protected-mode", "no"])
            .args(&self.options.extra_args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
    }

    /// Polls until the child answers `PING` with `+PONG` and `INFO` reports
    /// the child's pid, so a different server on the same port is not
    /// mistaken for ours.
    fn wait_ready(&mut self, log_offset: u64, stdio_offset: u64) -> Result<(), LaunchError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        for _ in 0..MAX_READY_POLLS {
            let child = self
                .child
                .as_mut()
                .expect("wait_ready called without a child process");
            let pid = child.id();
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                let fresh_output = format!(
                    "{}{}",
                    read_from(&self.log_path(), log_offset),
                    read_from(&self.stdio_log_path(), stdio_offset)
                );
                return Err(if looks_like_bind_failure(&fresh_output) {
                    LaunchError::PortInUse(status)
                } else {
                    LaunchError::Exited(status)
                });
            }
            if ping(self.port) && server_pid(self.port) == Some(pid) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                break;
            }
            thread::sleep(READY_POLL_INTERVAL);
        }
        Err(LaunchError::NotReady)
    }

    fn failure_report(&self, what: &str) -> String {
        let logs = self.logs();
        let tail = tail_of(&logs, LOG_TAIL_BYTES);
        format!(
            "{what}\n  port: {}\n  dir: {}\n--- redis log (last {} bytes) ---\n{tail}",
            self.port,
            self.dir.path().display(),
            tail.len()
        )
    }
}

impl Drop for RedisServer {
    /// Kills the process if it still runs. The `TempDir` field is dropped
    /// after this, which deletes the data directory.
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A parsed RESP2 reply.
///
/// A nil bulk string (`$-1`) and a nil array (`*-1`) both become
/// [`RespValue::Nil`]. `Display` prints it roughly the way `redis-cli` does,
/// which is handy in assertion messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RespValue {
    /// `+OK`-style status reply.
    Simple(String),
    /// `-ERR ...` error reply (the text after `-`).
    Error(String),
    /// `:123` integer reply.
    Integer(i64),
    /// `$n` bulk string (binary-safe).
    Bulk(Vec<u8>),
    /// `*n` array. Elements may be nested arrays.
    Array(Vec<RespValue>),
    /// Nil bulk string or nil array.
    Nil,
}

impl RespValue {
    /// Reads exactly one reply from `reader`. Arrays are parsed
    /// recursively, up to 32 levels deep. Fails with `UnexpectedEof` if the
    /// input ends early, `InvalidData` if it is malformed or too large, or
    /// the reader's error (e.g. a timeout).
    pub fn read_from<R: BufRead>(reader: &mut R) -> io::Result<RespValue> {
        read_value(reader, 0)
    }

    /// Text of a simple string or a UTF-8 bulk string. `None` for any other
    /// variant (errors included; see [`as_error`](Self::as_error)).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            RespValue::Simple(s) => Some(s),
            RespValue::Bulk(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// Raw bytes of a bulk string or simple string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            RespValue::Simple(s) => Some(s.as_bytes()),
            RespValue::Bulk(b) => Some(b),
            _ => None,
        }
    }

    /// An integer reply, or a simple/bulk string that parses as `i64`
    /// (e.g. `GET counter` or `HGET h field`).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            RespValue::Integer(n) => Some(*n),
            other => other.as_str()?.parse().ok(),
        }
    }

    /// Elements of an array reply.
    pub fn as_array(&self) -> Option<&[RespValue]> {
        match self {
            RespValue::Array(items) => Some(items),
            _ => None,
        }
    }

    /// Message of an error reply, e.g. `"ERR unknown command ..."`.
    pub fn as_error(&self) -> Option<&str> {
        match self {
            RespValue::Error(e) => Some(e),
            _ => None,
        }
    }

    /// `true` for a nil reply (e.g. `GET` of a missing key).
    pub fn is_nil(&self) -> bool {
        matches!(self, RespValue::Nil)
    }

    /// `true` for the `+OK` status reply.
    pub fn is_ok(&self) -> bool {
        matches!(self, RespValue::Simple(s) if s == "OK")
    }
}

impl fmt::Display for RespValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RespValue::Simple(s) => write!(f, "{s}"),
            RespValue::Error(e) => write!(f, "(error) {e}"),
            RespValue::Integer(n) => write!(f, "(integer) {n}"),
            RespValue::Bulk(b) => write!(f, "\"{}\"", b.escape_ascii()),
            RespValue::Nil => write!(f, "(nil)"),
            RespValue::Array(items) => {
                write!(f, "[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{item}")?;
                }
                write!(f, "]")
            }
        }
    }
}

/// Encodes `args` as a RESP array of bulk strings, the way clients send
/// commands: `["GET", "k"]` becomes `*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`.
pub fn encode_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads one CRLF-terminated line and returns it without the CRLF.
fn read_line<R: BufRead>(reader: &mut R) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    reader
        .by_ref()
        .take(MAX_LINE_LEN)
        .read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a complete RESP reply",
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(if line.len() as u64 >= MAX_LINE_LEN {
            invalid("RESP line too long")
        } else {
            io::Error::new(io::ErrorKind::UnexpectedEof, "truncated RESP line")
        });
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn parse_len(text: &str, max: usize) -> io::Result<Option<usize>> {
    let n: i64 = text
        .parse()
        .map_err(|_| invalid(format!("bad RESP length {text:?}")))?;
    if n < 0 {
        return Ok(None);
    }
    let n = usize::try_from(n).map_err(|_| invalid("RESP length overflow"))?;
    if n > max {
        return Err(invalid(format!("RESP length {n} exceeds limit {max}")));
    }
    Ok(Some(n))
}

fn read_value<R: BufRead>(reader: &mut R, depth: usize) -> io::Result<RespValue> {
    if depth > MAX_RESP_DEPTH {
        return Err(invalid("RESP reply nested too deeply"));
    }
    let line = read_line(reader)?;
    let (&kind, rest) = line
        .split_first()
        .ok_or_else(|| invalid("empty RESP line"))?;
    let text = std::str::from_utf8(rest).map_err(|_| invalid("RESP header is not UTF-8"))?;
    match kind {
        b'+' => Ok(RespValue::Simple(text.to_owned())),
        b'-' => Ok(RespValue::Error(text.to_owned())),
        b':' => text
            .parse()
            .map(RespValue::Integer)
            .map_err(|_| invalid(format!("bad RESP integer {text:?}"))),
        b'$' => {
            let Some(len) = parse_len(text, MAX_BULK_LEN)? else {
                return Ok(RespValue::Nil);
            };
            let mut buf = vec![0; len + 2];
            reader.read_exact(&mut buf)?;
            if !buf.ends_with(b"\r\n") {
                return Err(invalid("bulk string not followed by CRLF"));
            }
            buf.truncate(len);
            Ok(RespValue::Bulk(buf))
        }
        b'*' => {
            let Some(len) = parse_len(text, MAX_ARRAY_LEN)? else {
                return Ok(RespValue::Nil);
            };
            let mut items = Vec::with_capacity(len.min(1024));
            for _ in 0..len {
                items.push(read_value(reader, depth + 1)?);
            }
            Ok(RespValue::Array(items))
        }
        other => Err(invalid(format!(
            "unsupported RESP type byte {:?} (this harness speaks RESP2 only)",
            other as char
        ))),
    }
}

fn connect(port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&SocketAddr::from((LOOPBACK, port)), timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn send_command(port: u16, args: &[&str], timeout: Duration) -> io::Result<RespValue> {
    if args.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a Redis command needs at least one argument",
        ));
    }
    let mut stream = connect(port, timeout)?;
    stream.write_all(&encode_command(args))?;
    RespValue::read_from(&mut BufReader::new(stream))
}

/// One readiness probe: raw inline `PING`, expecting `+PONG`. While the AOF
/// is loading Redis replies `-LOADING`, which counts as not ready.
fn ping(port: u16) -> bool {
    let probe = || -> io::Result<bool> {
        let mut stream = connect(port, PROBE_TIMEOUT)?;
        stream.write_all(b"PING\r\n")?;
        let reply = RespValue::read_from(&mut BufReader::new(stream))?;
        Ok(reply == RespValue::Simple("PONG".to_string()))
    };
    probe().unwrap_or(false)
}

/// `process_id` from `INFO server`, if it can be read.
fn server_pid(port: u16) -> Option<u32> {
    let info = send_command(port, &["INFO", "server"], PROBE_TIMEOUT).ok()?;
    info.as_str()?
        .lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

/// Asks the OS for a free loopback port by binding `127.0.0.1:0` and
/// dropping the listener. Never returns 6379.
fn free_port() -> u16 {
    for _ in 0..MAX_FREE_PORT_DRAWS {
        let listener = TcpListener::bind((LOOPBACK, 0))
            .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0 to find a free port: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("cannot read local address of probe listener: {e}"))
            .port();
        drop(listener);
        if port != SHARED_REDIS_PORT {
            return port;
        }
    }
    panic!("the OS kept handing out port {SHARED_REDIS_PORT}; refusing to use it")
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind((LOOPBACK, port)).is_ok()
}

fn looks_like_bind_failure(output: &str) -> bool {
    output.contains("Address already in use")
        || output.contains("Could not create server TCP listening socket")
        || output.contains("Failed listening on port")
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// File contents from byte `offset` on (lossy UTF-8); empty on any error.
fn read_from(path: &Path, offset: u64) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    read().unwrap_or_default()
}

/// The last `max` bytes of `text` or fewer, cut at a char boundary.
fn tail_of(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}
