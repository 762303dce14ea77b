//! A minimal RESP2 connection for the shard writers: it writes a request built once into a
//! reused buffer and reads the replies, nothing else.
//!
//! Why not the redis crate's connection here: a group write is one pipeline of thousands of
//! snapshots (about a megabyte), and the crate builds each command's arguments into its own
//! buffer, then packs them all again into a fresh one: two copies plus fresh memory for every
//! write, which was a sixth of the engine's CPU on Redis (and most of its page faults). Here the
//! request is encoded straight into one buffer that keeps its capacity. Reads are cancel-safe:
//! bytes go into a persistent buffer and a reply is consumed only once it is complete, so a
//! timed-out call leaves the connection in a known state and the replies it still owes are
//! skipped by the next call (Redis runs what it was sent, in order).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::StoreError;

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// `+OK`, `+QUEUED`.
    Status(String),
    /// `-ERR …`.
    Error(String),
    /// `:n`.
    Int(i64),
    /// `$n` bulk string (None: nil).
    Bulk(Option<Vec<u8>>),
    /// `*n` array (None: nil, as from an aborted `EXEC`).
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The first error in this reply, looking inside arrays (an `EXEC` answers the errors of
    /// its commands in its array).
    pub(crate) fn first_error(&self) -> Option<&str> {
        match self {
            Reply::Error(message) => Some(message),
            Reply::Array(Some(items)) => items.iter().find_map(Reply::first_error),
            _ => None,
        }
    }

    /// A bulk string as text (None for nil or another kind).
    pub(crate) fn into_string(self) -> Option<String> {
        match self {
            Reply::Bulk(Some(bytes)) => String::from_utf8(bytes).ok(),
            Reply::Status(text) => Some(text),
            _ => None,
        }
    }
}

/// Encodes commands into a request buffer.
#[derive(Default)]
pub(crate) struct Request {
    bytes: Vec<u8>,
    commands: usize,
}

impl Request {
    /// Empties the request, keeping its capacity.
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.commands = 0;
    }

    /// Reserves room for `bytes` more bytes.
    pub(crate) fn reserve(&mut self, bytes: usize) {
        self.bytes.reserve(bytes);
    }

    /// Starts a command of `args` arguments (the name included); write them with `arg`.
    pub(crate) fn command(&mut self, args: usize) -> &mut Self {
        self.commands += 1;
        self.bytes.push(b'*');
        self.bytes
            .extend_from_slice(itoa::Buffer::new().format(args).as_bytes());
        self.bytes.extend_from_slice(b"\r\n");
        self
    }

    /// One argument.
    pub(crate) fn arg(&mut self, arg: impl AsRef<[u8]>) -> &mut Self {
        let arg = arg.as_ref();
        self.bytes.push(b'$');
        self.bytes
            .extend_from_slice(itoa::Buffer::new().format(arg.len()).as_bytes());
        self.bytes.extend_from_slice(b"\r\n");
        self.bytes.extend_from_slice(arg);
        self.bytes.extend_from_slice(b"\r\n");
        self
    }

    /// One argument made of `parts` back to back (no intermediate buffer).
    pub(crate) fn arg_parts<'a>(
        &mut self,
        parts: impl Iterator<Item = &'a [u8]> + Clone,
    ) -> &mut Self {
        let len: usize = parts.clone().map(<[u8]>::len).sum();
        self.bytes.push(b'$');
        self.bytes
            .extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
        self.bytes.extend_from_slice(b"\r\n");
        for part in parts {
            self.bytes.extend_from_slice(part);
        }
        self.bytes.extend_from_slice(b"\r\n");
        self
    }

    /// One integer argument.
    /// A signed integer argument.
    pub(crate) fn signed(&mut self, n: i64) -> &mut Self {
        self.arg(itoa::Buffer::new().format(n).as_bytes())
    }

    pub(crate) fn int(&mut self, value: u64) -> &mut Self {
        self.arg(itoa::Buffer::new().format(value))
    }

    /// Commands written so far (each answers one reply).
    pub(crate) fn commands(&self) -> usize {
        self.commands
    }
}

/// A connection to one Redis server.
pub(crate) struct RespConnection {
    stream: TcpStream,
    read: Vec<u8>,
    /// Start of the unparsed bytes in `read`.
    pos: usize,
    /// Replies of an earlier, abandoned call still to be read and skipped.
    owed: usize,
}

fn unavailable(what: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(what.to_string())
}

/// Most bytes one reply may take: far above any reply a writer asks for.
const REPLY_BYTES_MAX: usize = 64 << 20;

impl RespConnection {
    /// Connects to the server of `info` and authenticates / selects its database.
    pub(crate) async fn connect(
        info: &redis::ConnectionInfo,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<RespConnection, StoreError> {
        let (host, port) = match &info.addr {
            redis::ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
            other => {
                return Err(unavailable(format!(
                    "the shard writer speaks plain TCP only, not {other:?}"
                )))
            }
        };
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| StoreError::Timeout(connect_timeout.as_millis() as u64))?
            .map_err(unavailable)?;
        stream.set_nodelay(true).map_err(unavailable)?;
        let mut connection = RespConnection {
            stream,
            read: Vec::with_capacity(64 << 10),
            pos: 0,
            owed: 0,
        };
        let mut hello = Request::default();
        if let Some(password) = &info.redis.password {
            match &info.redis.username {
                Some(user) => hello.command(3).arg("AUTH").arg(user).arg(password),
                None => hello.command(2).arg("AUTH").arg(password),
            };
        }
        if info.redis.db != 0 {
            hello
                .command(2)
                .arg("SELECT")
                .arg(itoa::Buffer::new().format(info.redis.db));
        }
        if hello.commands() > 0 {
            let replies = connection.call(&hello, command_timeout).await?;
            if let Some(error) = replies.iter().find_map(Reply::first_error) {
                return Err(unavailable(format!("connection setup refused: {error}")));
            }
        }
        Ok(connection)
    }

    /// Sends `request` and reads its replies, within `timeout`. After a timeout the
    /// connection stays usable: the replies still owed are skipped by the next call.
    pub(crate) async fn call(
        &mut self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Vec<Reply>, StoreError> {
        let timeout_ms = timeout.as_millis() as u64;
        tokio::time::timeout(timeout, async {
            while self.owed > 0 {
                self.next_reply().await?;
                self.owed -= 1;
            }
            self.owed = request.commands;
            self.stream
                .write_all(&request.bytes)
                .await
                .map_err(unavailable)?;
            let mut replies = Vec::with_capacity(request.commands);
            while self.owed > 0 {
                replies.push(self.next_reply().await?);
                self.owed -= 1;
            }
            Ok(replies)
        })
        .await
        .map_err(|_| StoreError::Timeout(timeout_ms))?
    }

    /// Reads one complete reply (cancel-safe: nothing is consumed until it is complete).
    async fn next_reply(&mut self) -> Result<Reply, StoreError> {
        loop {
            if let Some((reply, used)) = parse(&self.read[self.pos..])? {
                self.pos += used;
                if self.pos == self.read.len() {
                    self.read.clear();
                    self.pos = 0;
                }
                return Ok(reply);
            }
            if self.read.len() - self.pos > REPLY_BYTES_MAX {
                return Err(unavailable("reply too large"));
            }
            if self.pos > 0 {
                self.read.drain(..self.pos);
                self.pos = 0;
            }
            self.read.reserve(16 << 10);
            let n = self
                .stream
                .read_buf(&mut self.read)
                .await
                .map_err(unavailable)?;
            if n == 0 {
                return Err(unavailable("connection closed by the server"));
            }
        }
    }
}

/// Parses one reply from the front of `bytes`: the reply and the bytes it took, or None if
/// `bytes` does not hold a whole reply yet.
fn parse(bytes: &[u8]) -> Result<Option<(Reply, usize)>, StoreError> {
    let Some(line_end) = bytes.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let Some((&kind, line)) = bytes[..line_end].split_first() else {
        return Err(unavailable("empty reply line"));
    };
    let text = || String::from_utf8_lossy(line).into_owned();
    let number = || -> Result<i64, StoreError> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| unavailable(format!("bad number in reply: {}", text())))
    };
    let after_line = line_end + 2;
    match kind {
        b'+' => Ok(Some((Reply::Status(text()), after_line))),
        b'-' => Ok(Some((Reply::Error(text()), after_line))),
        b':' => Ok(Some((Reply::Int(number()?), after_line))),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Reply::Bulk(None), after_line)));
            }
            let end = after_line + len as usize;
            if bytes.len() < end + 2 {
                return Ok(None);
            }
            Ok(Some((
                Reply::Bulk(Some(bytes[after_line..end].to_vec())),
                end + 2,
            )))
        }
        b'*' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Reply::Array(None), after_line)));
            }
            let mut used = after_line;
            let mut items = Vec::with_capacity((len as usize).min(4096));
            for _ in 0..len {
                match parse(&bytes[used..])? {
                    Some((item, n)) => {
                        items.push(item);
                        used += n;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), used)))
        }
        other => Err(unavailable(format!(
            "unknown reply type {:?}",
            char::from(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_reply_kind_and_waits_for_whole_replies() {
        let wire =
            b"+OK\r\n-ERR no\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*-1\r\n*2\r\n+QUEUED\r\n$0\r\n\r\n";
        let mut pos = 0;
        let mut replies = Vec::new();
        while pos < wire.len() {
            let (reply, used) = parse(&wire[pos..]).expect("valid").expect("complete");
            replies.push(reply);
            pos += used;
        }
        assert_eq!(
            replies,
            vec![
                Reply::Status("OK".into()),
                Reply::Error("ERR no".into()),
                Reply::Int(42),
                Reply::Bulk(Some(b"abc".to_vec())),
                Reply::Bulk(None),
                Reply::Array(None),
                Reply::Array(Some(vec![
                    Reply::Status("QUEUED".into()),
                    Reply::Bulk(Some(Vec::new()))
                ])),
            ]
        );
        // Every strict prefix of a reply is incomplete, never an error or a wrong reply.
        let whole = b"*2\r\n$3\r\nabc\r\n:7\r\n";
        for cut in 0..whole.len() {
            assert_eq!(
                parse(&whole[..cut]).expect("valid so far"),
                None,
                "cut {cut}"
            );
        }
        assert!(parse(b"?x\r\n").is_err());
    }

    #[test]
    fn encodes_commands_as_resp_arrays() {
        let mut request = Request::default();
        request.command(3).arg("SET").arg("k").int(12);
        assert_eq!(request.bytes, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n");
        assert_eq!(request.commands(), 1);
    }
}
