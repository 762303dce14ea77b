//! A lean HTTP/1.1 client for one loopback target: kept-alive connections from a pool, one
//! request in flight per connection, answers framed by `Content-Length`, chunked or read to
//! the end.
//!
//! Why not a general-purpose client: the load tool shares the machine with the server it
//! measures, so every microsecond it spends per request is taken from the server. With
//! `reqwest` the tool used about as much CPU per request as `orderly serve` itself (URL
//! parsing and host normalisation, a tower stack, a pool keyed by origin, a body stream per
//! answer); this client writes each request with one `write` and parses the answer in place
//! with `httparse`.
//!
//! A request on a reused connection that the server closed while it was idle (the answer's
//! first byte never came) is sent again once on a new connection: the server closed before
//! reading it, so it was not applied. Any other failure is the caller's.

use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::target::Target;

/// Most response headers parsed.
const HEADERS_MAX: usize = 32;
/// Read buffer growth step.
const READ_CHUNK: usize = 16 * 1024;
/// An idle connection older than this is closed rather than reused: servers close idle
/// connections after a keep-alive timeout (actix-web's default is 5 s), and a request sent on
/// one the server is closing has to be sent again.
const IDLE_REUSE_MAX: Duration = Duration::from_secs(2);

/// A complete answer.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

/// Why a request got no answer.
#[derive(Debug)]
pub(crate) enum Error {
    /// No complete answer within the request's timeout.
    Timeout,
    /// The connection could not be opened.
    Connect(io::Error),
    /// The answer's body is larger than allowed.
    TooLarge,
    /// The connection failed, or the answer was not HTTP/1.1 as expected.
    Transport(String),
}

impl Error {
    /// The error's key in the report (`timeout`, `connect`, `response_too_large`,
    /// `transport`).
    pub(crate) fn key(&self) -> &'static str {
        match self {
            Error::Timeout => "timeout",
            Error::Connect(_) => "connect",
            Error::TooLarge => "response_too_large",
            Error::Transport(_) => "transport",
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Timeout => write!(f, "timed out"),
            Error::Connect(e) => write!(f, "cannot connect: {e}"),
            Error::TooLarge => write!(f, "response too large"),
            Error::Transport(e) => write!(f, "{e}"),
        }
    }
}

/// Connections to one target.
pub(crate) struct Client {
    target: Target,
    idle: Mutex<Vec<Connection>>,
    idle_max: usize,
    connect_timeout: Duration,
    body_bytes_max: usize,
}

struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
    /// When it was last put back in the pool.
    idle_since: Instant,
}

/// How an exchange on one connection ended without an answer.
enum Failure {
    /// The server closed the connection before the first byte of an answer.
    ClosedBeforeAnswer,
    Other(Error),
}

impl From<io::Error> for Failure {
    fn from(error: io::Error) -> Failure {
        Failure::Other(Error::Transport(error.to_string()))
    }
}

/// A failure before any byte of the answer: a reset or broken pipe then means the server had
/// closed the connection.
fn before_answer(error: io::Error) -> Failure {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    ) {
        Failure::ClosedBeforeAnswer
    } else {
        error.into()
    }
}

impl Client {
    /// A client keeping up to `idle_max` idle connections.
    pub(crate) fn new(
        target: Target,
        idle_max: usize,
        connect_timeout: Duration,
        body_bytes_max: usize,
    ) -> Client {
        Client {
            target,
            idle: Mutex::new(Vec::new()),
            idle_max,
            connect_timeout,
            body_bytes_max,
        }
    }

    /// Sends `method path` with `headers` (name, value) and `body`, and reads the whole answer,
    /// all within `timeout`.
    pub(crate) async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<Response, Error> {
        let message = self.message(method, path, headers, body);
        match tokio::time::timeout(timeout, self.exchange(&message, method == "HEAD")).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout),
        }
    }

    fn message(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let path = self.target.request_path(path);
        let mut message = Vec::with_capacity(160 + path.len() + body.len());
        // Writing to a Vec cannot fail.
        let _ = write!(
            message,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n",
            self.target.authority()
        );
        for (name, value) in headers {
            let _ = write!(message, "{name}: {value}\r\n");
        }
        if !body.is_empty() || method != "GET" {
            let _ = write!(message, "Content-Length: {}\r\n", body.len());
        }
        message.extend_from_slice(b"\r\n");
        message.extend_from_slice(body);
        message
    }

    async fn exchange(&self, message: &[u8], head_only: bool) -> Result<Response, Error> {
        // One retry, on a new connection, for a kept-alive one the server closed while it was
        // idle.
        for attempt in 0..2 {
            let pooled = if attempt == 0 { self.checkout() } else { None };
            let (mut connection, reused) = match pooled {
                Some(connection) => (connection, true),
                None => (self.connect().await?, false),
            };
            match connection
                .exchange(message, head_only, self.body_bytes_max)
                .await
            {
                Ok((response, keep)) => {
                    if keep {
                        self.checkin(connection);
                    }
                    return Ok(response);
                }
                Err(Failure::ClosedBeforeAnswer) if reused => continue,
                Err(Failure::ClosedBeforeAnswer) => {
                    return Err(Error::Transport(
                        "connection closed before the answer".into(),
                    ))
                }
                Err(Failure::Other(error)) => return Err(error),
            }
        }
        Err(Error::Transport(
            "connection closed before the answer".into(),
        ))
    }

    fn checkout(&self) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(connection) = idle.pop() {
            if connection.idle_since.elapsed() <= IDLE_REUSE_MAX {
                return Some(connection);
            }
            // The most recently used connections are on top, so everything below is older.
            idle.clear();
        }
        None
    }

    fn checkin(&self, mut connection: Connection) {
        connection.idle_since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.idle_max {
            idle.push(connection);
        }
    }

    async fn connect(&self) -> Result<Connection, Error> {
        let addrs: &[SocketAddr] = self.target.socket_addrs();
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addrs)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => return Err(Error::Connect(error)),
                Err(_) => return Err(Error::Timeout),
            };
        stream.set_nodelay(true).map_err(Error::Connect)?;
        Ok(Connection {
            stream,
            buf: Vec::with_capacity(READ_CHUNK),
            idle_since: Instant::now(),
        })
    }
}

/// The framing of an answer's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

impl Connection {
    /// Writes `message` and reads one answer; also says whether the connection can be reused.
    async fn exchange(
        &mut self,
        message: &[u8],
        head_only: bool,
        body_max: usize,
    ) -> Result<(Response, bool), Failure> {
        self.stream
            .write_all(message)
            .await
            .map_err(before_answer)?;
        self.buf.clear();
        let (status, head_len, framing, mut keep) = loop {
            if let Some(head) = parse_head(&self.buf, head_only)? {
                break head;
            }
            let read = match self.fill().await {
                Ok(n) => n,
                Err(error) if self.buf.is_empty() => return Err(before_answer(error)),
                Err(error) => return Err(error.into()),
            };
            if read == 0 {
                return Err(if self.buf.is_empty() {
                    Failure::ClosedBeforeAnswer
                } else {
                    Failure::Other(Error::Transport(
                        "connection closed in the answer's head".into(),
                    ))
                });
            }
        };
        let body = match framing {
            Framing::None => Vec::new(),
            Framing::Length(length) => {
                if length > body_max {
                    return Err(Failure::Other(Error::TooLarge));
                }
                while self.buf.len() < head_len + length {
                    if self.fill().await? == 0 {
                        return Err(closed_in_body());
                    }
                }
                if self.buf.len() > head_len + length {
                    // Bytes after the answer: nothing was asked for them.
                    keep = false;
                }
                self.buf[head_len..head_len + length].to_vec()
            }
            Framing::Chunked => {
                let mut decoder = Chunked::new(head_len);
                loop {
                    match decoder.advance(&self.buf).map_err(|e| {
                        Failure::Other(Error::Transport(format!("bad chunked answer: {e}")))
                    })? {
                        true => break,
                        false if decoder.body.len() > body_max => {
                            return Err(Failure::Other(Error::TooLarge))
                        }
                        false => {
                            if self.fill().await? == 0 {
                                return Err(closed_in_body());
                            }
                        }
                    }
                }
                if self.buf.len() > decoder.pos {
                    keep = false;
                }
                decoder.body
            }
            Framing::UntilClose => {
                keep = false;
                while self.fill().await? > 0 {
                    if self.buf.len() - head_len > body_max {
                        return Err(Failure::Other(Error::TooLarge));
                    }
                }
                self.buf[head_len..].to_vec()
            }
        };
        Ok((Response { status, body }, keep))
    }

    async fn fill(&mut self) -> io::Result<usize> {
        self.buf.reserve(READ_CHUNK);
        self.stream.read_buf(&mut self.buf).await
    }
}

fn closed_in_body() -> Failure {
    Failure::Other(Error::Transport(
        "connection closed in the answer's body".into(),
    ))
}

/// Parses an answer's head: status, head length, body framing and keep-alive, or `None` if
/// more bytes are needed.
fn parse_head(buf: &[u8], head_only: bool) -> Result<Option<(u16, usize, Framing, bool)>, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => {
            return Err(Failure::Other(Error::Transport(format!(
                "bad answer head: {error}"
            ))))
        }
    };
    let status = response.code.unwrap_or(0);
    let mut keep = response.version == Some(1);
    let mut length = None;
    let mut chunked = false;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
            match parsed {
                Some(n) => length = Some(n),
                None => {
                    return Err(Failure::Other(Error::Transport(
                        "bad Content-Length in the answer".into(),
                    )))
                }
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = header
                .value
                .split(|b| *b == b',')
                .any(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if header.name.eq_ignore_ascii_case("connection") {
            let value = header.value.trim_ascii();
            if value.eq_ignore_ascii_case(b"close") {
                keep = false;
            } else if value.eq_ignore_ascii_case(b"keep-alive") {
                keep = true;
            }
        }
    }
    let framing = if head_only || status / 100 == 1 || status == 204 || status == 304 {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok(Some((status, head_len, framing, keep)))
}

/// An incremental decoder of a chunked body in the connection's buffer.
struct Chunked {
    /// Where the next chunk's size line starts (or the trailer, once `done_chunks`).
    pos: usize,
    body: Vec<u8>,
    done_chunks: bool,
}

impl Chunked {
    fn new(start: usize) -> Chunked {
        Chunked {
            pos: start,
            body: Vec::new(),
            done_chunks: false,
        }
    }

    /// Consumes what `buf` holds; `true` once the whole body (trailer included) is read.
    fn advance(&mut self, buf: &[u8]) -> Result<bool, String> {
        loop {
            let Some(line_end) = find_crlf(&buf[self.pos..]).map(|i| self.pos + i) else {
                return Ok(false);
            };
            if self.done_chunks {
                // Trailer lines until an empty one.
                let empty = line_end == self.pos;
                self.pos = line_end + 2;
                if empty {
                    return Ok(true);
                }
                continue;
            }
            let line = &buf[self.pos..line_end];
            let size_text = line.split(|b| *b == b';').next().unwrap_or_default();
            let size = std::str::from_utf8(size_text)
                .ok()
                .and_then(|t| usize::from_str_radix(t.trim(), 16).ok())
                .ok_or_else(|| "bad chunk size".to_string())?;
            if size == 0 {
                self.done_chunks = true;
                self.pos = line_end + 2;
                continue;
            }
            let data = line_end + 2;
            let end = data.checked_add(size).ok_or("chunk too large")?;
            if buf.len() < end + 2 {
                return Ok(false);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err("chunk not followed by CRLF".into());
            }
            self.body.extend_from_slice(&buf[data..end]);
            self.pos = end + 2;
        }
    }
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_give_status_framing_and_keep_alive() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        let (status, len, framing, keep) = parse_head(head, false).ok().flatten().unwrap();
        assert_eq!((status, framing, keep), (200, Framing::Length(5), true));
        assert_eq!(&head[len..], b"hello");
        let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
        let (_, _, framing, keep) = parse_head(head, false).ok().flatten().unwrap();
        assert_eq!((framing, keep), (Framing::Chunked, false));
        let head = b"HTTP/1.1 204 No Content\r\n\r\n";
        let (_, _, framing, _) = parse_head(head, false).ok().flatten().unwrap();
        assert_eq!(framing, Framing::None);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-le", false)
            .ok()
            .unwrap()
            .is_none());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", false).is_err());
    }

    #[test]
    fn chunked_bodies_decode_in_pieces() {
        let whole = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\n";
        // Fed one byte more at a time, the decoder finishes exactly at the end.
        let mut decoder = Chunked::new(0);
        let mut finished_at = None;
        for n in 1..=whole.len() {
            if decoder.advance(&whole[..n]).unwrap() {
                finished_at = Some(n);
                break;
            }
        }
        assert_eq!(finished_at, Some(whole.len()));
        assert_eq!(decoder.body, b"Wikipedia");
        assert_eq!(decoder.pos, whole.len());
        assert!(Chunked::new(0).advance(b"zz\r\n").is_err());
        assert!(Chunked::new(0).advance(b"2\r\nabX\r\n").is_err());
    }
}
