//! The load target. Load is only ever sent to this machine: a target whose host is not a
//! loopback address is refused before any request is made.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use anyhow::{bail, Context};

/// A validated base URL such as `http://127.0.0.1:8080` (no trailing slash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    base: String,
    /// The resolved addresses (all loopback).
    addrs: Vec<SocketAddr>,
    /// `host[:port]` as given, for the `Host` header.
    authority: String,
    /// The URL's path without its trailing `/` (usually empty), put before each request path.
    path_prefix: String,
}

impl Target {
    /// Parses `text` and checks that it names a loopback address: an IPv4 address in
    /// 127.0.0.0/8, `::1`, or `localhost` when every address it resolves to is loopback.
    /// Any other host name is refused without being resolved. Only `http` is supported.
    pub fn parse(text: &str) -> anyhow::Result<Target> {
        let url =
            reqwest::Url::parse(text).with_context(|| format!("invalid target URL {text:?}"))?;
        if url.scheme() != "http" {
            bail!("target {text:?}: only http:// is supported (the target is a local `orderly serve`)");
        }
        if url.query().is_some() || url.fragment().is_some() {
            bail!("target {text:?}: must not carry a query or fragment");
        }
        let port = url.port_or_known_default().unwrap_or(80);
        let host = url.host_str().unwrap_or_default();
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = match literal.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) if host.eq_ignore_ascii_case("localhost") => {
                let addrs: Vec<IpAddr> = (host, port)
                    .to_socket_addrs()
                    .with_context(|| format!("cannot resolve {host}"))?
                    .map(|a| a.ip())
                    .collect();
                !addrs.is_empty() && addrs.iter().all(IpAddr::is_loopback)
            }
            // Any other name is refused unresolved: resolving it would already reach out.
            Err(_) => false,
        };
        if !loopback {
            bail!(
                "refusing to send load to {text:?}: orderly-load only targets this machine \
                 (127.0.0.0/8, [::1] or localhost)"
            );
        }
        let addrs: Vec<SocketAddr> = (literal, port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {host}"))?
            .collect();
        if addrs.is_empty() {
            bail!("target {text:?}: {host} resolves to no address");
        }
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        Ok(Target {
            base: url.as_str().trim_end_matches('/').to_string(),
            addrs,
            authority,
            path_prefix: url.path().trim_end_matches('/').to_string(),
        })
    }

    /// The base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The URL of `path` (which starts with `/`) under the base.
    /// The addresses to connect to.
    pub fn socket_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// `host[:port]`, the `Host` header's value.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The request target (origin form) of `path` on this base URL.
    pub fn request_path(&self, path: &str) -> String {
        format!("{}{path}", self.path_prefix)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_targets_are_accepted() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            "http://127.1.2.3:1",
            "http://[::1]:8080",
            "http://localhost:8080/prefix",
        ] {
            let target = Target::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert!(!target.base().ends_with('/'), "{target:?}");
        }
        let target = Target::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(target.url("/v1/orders"), "http://127.0.0.1:8080/v1/orders");
    }

    #[test]
    fn other_hosts_are_refused_with_a_clear_error() {
        for bad in [
            "http://10.0.0.1:8080",
            "http://192.168.1.10",
            "http://8.8.8.8",
            "http://[2001:db8::1]:80",
            "http://example.com",
            "http://0.0.0.0:8080",
        ] {
            let error = Target::parse(bad).expect_err(bad).to_string();
            assert!(error.contains("refusing"), "{bad}: {error}");
        }
        assert!(Target::parse("https://127.0.0.1").is_err());
        assert!(Target::parse("not a url").is_err());
    }
}
