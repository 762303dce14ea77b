//! Self-test of the `support::redis_server` harness: the server starts on a free loopback port, data survives graceful restarts and `kill -9`, servers are isolated, and dropping one cleans up its process and directory.

mod support;

use std::io::{BufReader, ErrorKind};
use std::path::Path;
use std::thread;
use std::time::Duration;

use support::redis_server::{encode_command, RedisOptions, RedisServer, RespValue};

fn bulk(s: &str) -> RespValue {
    RespValue::Bulk(s.as_bytes().to_vec())
}

/// `CONFIG GET name` value as a string.
fn config_get(redis: &RedisServer, name: &str) -> String {
    let reply = redis.command(&["CONFIG", "GET", name]);
    let items = reply
        .as_array()
        .unwrap_or_else(|| panic!("CONFIG GET {name}: unexpected reply {reply}"));
    assert_eq!(items.len(), 2, "CONFIG GET {name}: {reply}");
    items[1].as_str().expect("config value is text").to_owned()
}

#[test]
fn starts_on_a_free_loopback_port_and_answers_ping() {
    let redis = RedisServer::start();
    assert_ne!(redis.port(), 0);
    assert_ne!(redis.port(), 6379, "must never use the shared Redis");
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}/", redis.port()));
    assert_eq!(redis.command(&["PING"]), RespValue::Simple("PONG".into()));

    assert_eq!(config_get(&redis, "bind"), "127.0.0.1");
    assert_eq!(config_get(&redis, "appendonly"), "yes");
    assert_eq!(config_get(&redis, "appendfsync"), "always");
    assert_eq!(config_get(&redis, "save"), "");
    assert_eq!(
        Path::new(&config_get(&redis, "dir"))
            .canonicalize()
            .unwrap(),
        redis.dir().canonicalize().unwrap()
    );
    assert!(redis.log_path().exists(), "redis writes its log file");
}

#[test]
fn extra_args_are_passed_to_redis() {
    let redis = RedisServer::start_with(RedisOptions {
        extra_args: vec!["--maxmemory".into(), "10mb".into()],
        ..RedisOptions::default()
    });
    assert_eq!(config_get(&redis, "maxmemory"), "10485760");
}

#[test]
fn command_parses_nested_arrays_errors_integers_and_nil() {
    let redis = RedisServer::start();
    assert!(redis.command(&["SET", "s", "text"]).is_ok());
    assert_eq!(redis.command(&["GET", "s"]).as_str(), Some("text"));
    assert!(redis.command(&["GET", "missing"]).is_nil());
    assert_eq!(redis.command(&["INCRBY", "n", "41"]).as_int(), Some(41));
    assert_eq!(redis.command(&["HSET", "h", "f", "7"]).as_int(), Some(1));
    assert_eq!(redis.command(&["HGET", "h", "f"]).as_int(), Some(7));
    assert_eq!(redis.command(&["DBSIZE"]), RespValue::Integer(3));

    let err = redis.command(&["INCR", "s"]);
    assert!(
        err.as_error()
            .is_some_and(|e| e.starts_with("ERR value is not an integer")),
        "{err}"
    );

    let nested = redis.command(&["EVAL", "return {1, {'a', {2, 'b'}}, 'c'}", "0"]);
    assert_eq!(
        nested,
        RespValue::Array(vec![
            RespValue::Integer(1),
            RespValue::Array(vec![
                bulk("a"),
                RespValue::Array(vec![RespValue::Integer(2), bulk("b")]),
            ]),
            bulk("c"),
        ])
    );
    assert_eq!(
        nested.to_string(),
        r#"[(integer) 1, ["a", [(integer) 2, "b"]], "c"]"#
    );

    let mut keys: Vec<String> = redis
        .command(&["KEYS", "*"])
        .as_array()
        .expect("KEYS returns an array")
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    assert_eq!(keys, ["h", "n", "s"]);

    assert!(redis.command(&["CLIENT", "PAUSE", "100", "WRITE"]).is_ok());
    assert!(redis.command(&["CLIENT", "UNPAUSE"]).is_ok());
}

#[test]
fn resp_parser_handles_raw_bytes() {
    let parse = |bytes: &[u8]| RespValue::read_from(&mut BufReader::new(bytes));

    assert_eq!(parse(b"+OK\r\n").unwrap(), RespValue::Simple("OK".into()));
    assert_eq!(parse(b":-5\r\n").unwrap(), RespValue::Integer(-5));
    assert_eq!(parse(b"$0\r\n\r\n").unwrap(), bulk(""));
    assert_eq!(
        parse(b"$4\r\na\r\nb\r\n").unwrap(),
        RespValue::Bulk(b"a\r\nb".to_vec()),
        "bulk strings are binary-safe"
    );
    assert_eq!(parse(b"$-1\r\n").unwrap(), RespValue::Nil);
    assert_eq!(parse(b"*-1\r\n").unwrap(), RespValue::Nil);
    assert_eq!(parse(b"*0\r\n").unwrap(), RespValue::Array(vec![]));
    assert_eq!(
        parse(b"*2\r\n*1\r\n:1\r\n-ERR x\r\n").unwrap(),
        RespValue::Array(vec![
            RespValue::Array(vec![RespValue::Integer(1)]),
            RespValue::Error("ERR x".into()),
        ])
    );

    assert_eq!(parse(b"").unwrap_err().kind(), ErrorKind::UnexpectedEof);
    assert_eq!(
        parse(b"$5\r\nab").unwrap_err().kind(),
        ErrorKind::UnexpectedEof
    );
    assert_eq!(
        parse(b"*2\r\n:1\r\n").unwrap_err().kind(),
        ErrorKind::UnexpectedEof
    );
    assert_eq!(parse(b"?x\r\n").unwrap_err().kind(), ErrorKind::InvalidData);

    assert_eq!(
        encode_command(&["GET", "k"]),
        b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec()
    );
}

#[test]
fn data_survives_graceful_restart() {
    let mut redis = RedisServer::start();
    let (port, pid) = (redis.port(), redis.pid());
    assert!(redis.command(&["SET", "k", "v"]).is_ok());
    assert_eq!(redis.command(&["HSET", "h", "f", "x"]).as_int(), Some(1));

    redis.restart();

    assert_eq!(redis.port(), port, "restart keeps the port");
    assert_ne!(redis.pid(), pid, "restart runs a new process");
    assert_eq!(redis.command(&["GET", "k"]).as_str(), Some("v"));
    assert_eq!(redis.command(&["HGET", "h", "f"]).as_str(), Some("x"));
    assert_eq!(redis.command(&["DBSIZE"]).as_int(), Some(2));
}

#[test]
fn kill9_with_appendfsync_always_keeps_every_acknowledged_write() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    for i in 0..100 {
        let key = format!("key:{i}");
        assert!(redis.command(&["SET", &key, &i.to_string()]).is_ok());
    }

    redis.kill9(); // immediately after the last acknowledged write
    assert!(!redis.is_running());
    assert!(redis.pid().is_none());
    assert!(
        redis.try_command(&["PING"]).is_err(),
        "server must be down after kill9"
    );

    redis.start_again();
    assert_eq!(redis.port(), port, "start_again keeps the port");
    assert_eq!(redis.command(&["DBSIZE"]).as_int(), Some(100));
    assert_eq!(redis.command(&["GET", "key:99"]).as_int(), Some(99));
}

#[test]
fn kill9_with_appendfsync_everysec_keeps_writes_older_than_one_second() {
    let mut redis = RedisServer::start_with(RedisOptions {
        appendfsync: "everysec",
        ..RedisOptions::default()
    });
    assert_eq!(config_get(&redis, "appendfsync"), "everysec");
    assert!(redis.command(&["SET", "old", "1"]).is_ok());
    thread::sleep(Duration::from_millis(1_500));

    redis.kill9();
    redis.start_again();

    assert_eq!(redis.command(&["GET", "old"]).as_int(), Some(1));
}

#[test]
fn stop_takes_the_server_down_until_started_again() {
    let mut redis = RedisServer::start();
    assert!(redis.command(&["SET", "k", "before-stop"]).is_ok());

    redis.stop();
    assert!(!redis.is_running());
    assert!(redis.try_command(&["PING"]).is_err());
    redis.stop(); // stopping twice is a no-op
    redis.kill9(); // so is killing a stopped server

    redis.start_again();
    assert!(redis.is_running());
    assert_eq!(redis.command(&["GET", "k"]).as_str(), Some("before-stop"));
}

#[test]
fn two_servers_run_side_by_side() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.dir(), b.dir());

    assert!(a.command(&["SET", "k", "a"]).is_ok());
    assert!(b.command(&["SET", "k", "b"]).is_ok());
    assert_eq!(a.command(&["GET", "k"]).as_str(), Some("a"));
    assert_eq!(b.command(&["GET", "k"]).as_str(), Some("b"));
}

#[test]
fn drop_kills_the_process_and_removes_the_temp_dir() {
    let redis = RedisServer::start();
    let pid = redis.pid().expect("running server has a pid");
    let port = redis.port();
    let dir = redis.dir().to_path_buf();
    assert!(dir.exists());

    drop(redis);

    assert!(!dir.exists(), "temp dir {} must be removed", dir.display());
    // Drop reaped the child, so its /proc entry is gone (or, if the pid was
    // reused meanwhile, it belongs to another process). Redis retitles
    // itself "redis-server 127.0.0.1:<port>".
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(
        !(cmdline.contains("redis") && cmdline.contains(&format!(":{port}"))),
        "redis-server pid {pid} still running: {cmdline}"
    );
}
