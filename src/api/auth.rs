//! Access control: bearer tokens from `[api] keys`, compared in constant time.
//!
//! When keys are configured, everything under `/v1/` needs one (the write endpoints the design
//! names, and reads too, because an order carries customer data); `/healthz`, `/readyz` and
//! `/metrics` need one only when `public_health` is off. With no keys configured nothing is
//! checked, and `serve` then refuses to listen beyond loopback.

use actix_web::dev::ServiceRequest;
use actix_web::http::header;
use subtle::ConstantTimeEq;

/// Paths that are open when `public_health` is on.
const HEALTH_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The configured keys, as bytes.
pub(crate) struct ApiKeys {
    keys: Vec<Box<[u8]>>,
    public_health: bool,
}

impl ApiKeys {
    /// Keys from the settings.
    pub(crate) fn new(keys: &[String], public_health: bool) -> ApiKeys {
        ApiKeys {
            keys: keys
                .iter()
                .filter(|k| !k.is_empty())
                .map(|k| k.as_bytes().into())
                .collect(),
            public_health,
        }
    }

    /// Whether this request may proceed.
    pub(crate) fn allows(&self, req: &ServiceRequest) -> bool {
        if self.keys.is_empty() || !self.guards(req.path()) {
            return true;
        }
        let Some(token) = bearer_token(req) else {
            return false;
        };
        // Compare against every key without stopping at the first match, so the time taken
        // does not tell which key (or which prefix of one) is right.
        let mut matched = subtle::Choice::from(0);
        for key in &self.keys {
            matched |= key.as_ref().ct_eq(token);
        }
        matched.into()
    }

    fn guards(&self, path: &str) -> bool {
        if path.starts_with("/v1/") {
            return true;
        }
        !self.public_health && HEALTH_PATHS.contains(&path)
    }
}

fn bearer_token(req: &ServiceRequest) -> Option<&[u8]> {
    let value = req.headers().get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at(value.iter().position(|b| *b == b' ')?);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| token.trim_ascii())
        .filter(|t| !t.is_empty())
}
