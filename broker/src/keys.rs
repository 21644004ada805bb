//! API keys: who a connection is, and the rate limits it publishes under.
//!
//! Keys are listed in the config (`[[keys]]` with `name`, `token` and an optional `rate`). A
//! client presents its token in `Hello`. With keys configured, a missing or unknown token gets
//! `Error{Unauthorized}` and the connection is closed. With none configured the broker accepts
//! anonymous clients — from loopback addresses only (DESIGN.md §6), and says so at start.
//! The number of keys is bounded by the config itself.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// One configured API key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// A name for logs and metrics (not secret).
    pub name: String,
    /// The secret the client presents in `Hello`.
    pub token: String,
    /// This key's rate limits; unset fields take `[default_rate]`.
    #[serde(default)]
    pub rate: Option<RateConfig>,
}

/// Publish and operation rate limits of one key (token buckets). At a bucket's bound the
/// publish (or operation) is refused with `Rejected{RateLimited}` and `retry_after_ms` = the
/// bucket's refill time; other keys are unaffected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateConfig {
    /// Sustained publishes per second. Default 1 000 000 — above what one broker commits, so
    /// a key is only limited where the config says so.
    pub messages_per_s: u64,
    /// Publishes allowed in a burst. Default 1 000 000.
    pub messages_burst: u64,
    /// Sustained publish payload bytes per second. Default 1 GiB.
    pub bytes_per_s: u64,
    /// Publish payload bytes allowed in a burst. Default 1 GiB.
    pub bytes_burst: u64,
    /// Sustained expensive operations (topic create, subscribe) per second. Default 100.
    pub ops_per_s: u64,
    /// Expensive operations allowed in a burst. Default 100.
    pub ops_burst: u64,
}

impl Default for RateConfig {
    fn default() -> Self {
        RateConfig {
            messages_per_s: 1_000_000,
            messages_burst: 1_000_000,
            bytes_per_s: 1024 * 1024 * 1024,
            bytes_burst: 1024 * 1024 * 1024,
            ops_per_s: 100,
            ops_burst: 100,
        }
    }
}

impl RateConfig {
    /// Checks every rate and burst is at least 1.
    pub fn validate(&self, whose: &str) -> Result<(), String> {
        let all = [
            self.messages_per_s,
            self.messages_burst,
            self.bytes_per_s,
            self.bytes_burst,
            self.ops_per_s,
            self.ops_burst,
        ];
        if all.contains(&0) {
            return Err(format!("{whose}: every rate and burst must be at least 1"));
        }
        Ok(())
    }
}

/// Who a connection authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The key's name, or `anonymous`.
    pub name: String,
    /// The key's rate limits.
    pub rate: RateConfig,
}

/// Why `Hello` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Keys are configured and the token is missing or unknown.
    #[error("a valid API key is required")]
    BadToken,
    /// No keys are configured and the client is not on a loopback address.
    #[error("anonymous clients are accepted from loopback addresses only; configure API keys")]
    AnonymousNotLoopback,
}

/// The configured keys, by token.
#[derive(Debug, Clone)]
pub struct KeyRing {
    by_token: HashMap<String, Identity>,
    default_rate: RateConfig,
}

impl KeyRing {
    /// The key ring for `keys`, whose unset rates take `default_rate`.
    pub fn new(keys: &[ApiKey], default_rate: RateConfig) -> KeyRing {
        let by_token = keys
            .iter()
            .map(|k| {
                let rate = k.rate.unwrap_or(default_rate);
                (
                    k.token.clone(),
                    Identity {
                        name: k.name.clone(),
                        rate,
                    },
                )
            })
            .collect();
        KeyRing {
            by_token,
            default_rate,
        }
    }

    /// Authenticates a `Hello` from `peer` presenting `token`.
    pub fn authenticate(&self, token: Option<&str>, peer: IpAddr) -> Result<Identity, AuthError> {
        if self.by_token.is_empty() {
            if !peer.is_loopback() {
                return Err(AuthError::AnonymousNotLoopback);
            }
            return Ok(Identity {
                name: "anonymous".into(),
                rate: self.default_rate,
            });
        }
        token
            .and_then(|t| self.by_token.get(t))
            .cloned()
            .ok_or(AuthError::BadToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, token: &str, rate: Option<RateConfig>) -> ApiKey {
        ApiKey {
            name: name.into(),
            token: token.into(),
            rate,
        }
    }

    #[test]
    fn without_keys_only_loopback_is_anonymous() {
        let ring = KeyRing::new(&[], RateConfig::default());
        let id = ring.authenticate(None, [127, 0, 0, 1].into()).unwrap();
        assert_eq!(id.name, "anonymous");
        assert_eq!(
            ring.authenticate(Some("x"), [10, 1, 2, 3].into()),
            Err(AuthError::AnonymousNotLoopback)
        );
    }

    #[test]
    fn with_keys_the_token_decides_and_rates_default() {
        let slow = RateConfig {
            messages_per_s: 5,
            ..RateConfig::default()
        };
        let ring = KeyRing::new(
            &[key("a", "ta", Some(slow)), key("b", "tb", None)],
            RateConfig::default(),
        );
        assert_eq!(
            ring.authenticate(Some("ta"), [10, 0, 0, 1].into())
                .unwrap()
                .rate,
            slow
        );
        assert_eq!(
            ring.authenticate(Some("tb"), [127, 0, 0, 1].into())
                .unwrap()
                .rate,
            RateConfig::default()
        );
        assert_eq!(
            ring.authenticate(None, [127, 0, 0, 1].into()),
            Err(AuthError::BadToken)
        );
        assert_eq!(
            ring.authenticate(Some("nope"), [127, 0, 0, 1].into()),
            Err(AuthError::BadToken)
        );
    }
}
