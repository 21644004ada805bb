//! API keys: who a connection is, and the rate limits it publishes under.
//!
//! Keys are listed in the config (`[[keys]]` with `name`, the secret as `token` or as its
//! SHA-256 `token_sha256` (hex), and an optional `rate`). A client presents its token in
//! `Hello`; the broker compares digests (each in constant time), so it needs only the hash. With
//! keys configured, a missing or unknown token gets
//! `Error{Unauthorized}` and the connection is closed. With none configured the broker accepts
//! anonymous clients — from loopback addresses only (DESIGN.md §6), and says so at start;
//! an `[anonymous]` section says where anonymous clients may come from instead, keys or not.
//! Each key (and anonymous) carries its compiled [`permissions`](crate::permissions).
//! The number of keys is bounded by the config itself.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::permissions::{Access, Anonymous, AnonymousConfig, Grants, Permission, ANONYMOUS};

/// One configured API key: exactly one of `token` and `token_sha256` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// A name for logs and metrics (not secret).
    pub name: String,
    /// The secret the client presents in `Hello`, in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The SHA-256 of the token, 64 hex digits: the config need not hold the secret itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
    /// This key's rate limits; unset fields take `[default_rate]`.
    #[serde(default)]
    pub rate: Option<RateConfig>,
    /// What this key may do on which topics; left out: every action on every topic (what a
    /// key could do before permissions existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<Permission>>,
}

impl ApiKey {
    /// A key named `name` whose secret is `token` (in clear).
    pub fn with_token(name: &str, token: &str, rate: Option<RateConfig>) -> ApiKey {
        ApiKey {
            name: name.into(),
            token: Some(token.into()),
            token_sha256: None,
            rate,
            permissions: None,
        }
    }

    /// This key's permissions compiled; an error names the key and the rule.
    pub fn grants(&self) -> Result<Grants, String> {
        Grants::compile(self.permissions.as_deref())
            .map_err(|e| format!("key {:?}: {e}", self.name))
    }

    /// The SHA-256 of this key's token, from whichever form the config holds; an error names
    /// the key when neither or both are set, the token is empty or the hex is not 64 digits.
    pub fn digest(&self) -> Result<[u8; 32], String> {
        match (&self.token, &self.token_sha256) {
            (Some(token), None) if !token.is_empty() => Ok(token_digest(token)),
            (None, Some(hex)) => parse_hex_digest(hex)
                .ok_or_else(|| format!("key {:?}: token_sha256 must be 64 hex digits", self.name)),
            _ => Err(format!(
                "key {:?}: set exactly one of token (non-empty) and token_sha256",
                self.name
            )),
        }
    }

    /// This key with its clear token replaced by `token_sha256`: what `--print-config` shows.
    pub fn masked(&self) -> ApiKey {
        let mut key = self.clone();
        if let Some(token) = key.token.take() {
            key.token_sha256 = Some(hex_digest(&token_digest(&token)));
        }
        key
    }
}

/// The SHA-256 of `token`.
fn token_digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// `digest` as 64 lowercase hex digits.
fn hex_digest(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 hex digits (either case).
fn parse_hex_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(digest)
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
    /// What the key may do, and its refusals.
    pub access: Arc<Access>,
}

/// Why `Hello` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Keys are configured and the token is missing or unknown.
    #[error("a valid API key is required")]
    BadToken,
    /// No token, and the client's address is not one anonymous clients may come from
    /// (loopback, unless `[anonymous] allow_from` says otherwise).
    #[error("anonymous clients are not accepted from this address (loopback only, or [anonymous] allow_from); configure API keys")]
    AnonymousNotAllowed,
}

/// The configured keys, by the SHA-256 of their token (and by name, for client certificates).
#[derive(Debug, Clone)]
pub struct KeyRing {
    by_token: HashMap<[u8; 32], Identity>,
    /// Keys by name, for a verified client certificate naming one (mutual TLS); `None` for a
    /// name two keys share (a certificate naming it names no key).
    by_name: HashMap<String, Option<Identity>>,
    default_rate: RateConfig,
    /// Who may come without a token; `None`: nobody.
    anonymous: Option<Anonymous>,
}

impl KeyRing {
    /// The key ring for `keys`, whose unset rates take `default_rate`, with anonymous access
    /// as `anonymous` says (`None`: loopback only, and only while no key is configured). A key
    /// without a usable secret or with bad permissions (both refused by `Config::validate`)
    /// matches no token; a bad `anonymous` admits nobody.
    pub fn new(
        keys: &[ApiKey],
        default_rate: RateConfig,
        anonymous: Option<&AnonymousConfig>,
    ) -> KeyRing {
        let by_token: HashMap<_, _> = keys
            .iter()
            .filter_map(|k| Some((k, k.digest().ok()?, k.grants().ok()?)))
            .map(|(k, digest, grants)| {
                let rate = k.rate.unwrap_or(default_rate);
                (
                    digest,
                    Identity {
                        name: k.name.clone(),
                        rate,
                        access: Arc::new(Access::new(&k.name, grants)),
                    },
                )
            })
            .collect();
        let mut by_name: HashMap<String, Option<Identity>> = HashMap::new();
        for identity in by_token.values() {
            by_name
                .entry(identity.name.clone())
                .and_modify(|shared| *shared = None)
                .or_insert_with(|| Some(identity.clone()));
        }
        let anonymous = match anonymous {
            Some(config) => Anonymous::compile(config).ok(),
            None if by_token.is_empty() => Some(Anonymous::loopback()),
            None => None,
        };
        KeyRing {
            by_token,
            by_name,
            default_rate,
            anonymous,
        }
    }

    /// Every key's access, and anonymous's if anonymous clients are admitted: what
    /// `weir_forbidden_total` reads. Bounded by the config.
    pub fn accesses(&self) -> impl Iterator<Item = &Access> {
        self.by_token
            .values()
            .map(|id| &*id.access)
            .chain(self.anonymous.iter().map(|a| &*a.access))
    }

    /// Authenticates a `Hello` from `peer` presenting `token`.
    /// Authenticates a `Hello` (or an admin request) from `peer` presenting `token`, over a
    /// connection whose verified client certificate (mutual TLS) has DNS names `cert_names`
    /// (empty without one): a token, when given, decides; without one, the key named by one of
    /// the names (the first naming exactly one key) is the client's identity, else anonymous
    /// access applies. A certificate naming no key changes nothing.
    pub fn authenticate(
        &self,
        token: Option<&str>,
        cert_names: &[String],
        peer: IpAddr,
    ) -> Result<Identity, AuthError> {
        if token.is_none() {
            let named = cert_names
                .iter()
                .find_map(|n| self.by_name.get(n).and_then(Option::as_ref));
            if let Some(identity) = named {
                return Ok(identity.clone());
            }
        }
        let anonymous_call = token.is_none() || self.by_token.is_empty();
        if let Some(anonymous) = self.anonymous.as_ref().filter(|_| anonymous_call) {
            if !anonymous.admits(peer) {
                return Err(AuthError::AnonymousNotAllowed);
            }
            return Ok(Identity {
                name: ANONYMOUS.into(),
                rate: self.default_rate,
                access: anonymous.access.clone(),
            });
        }
        token
            .and_then(|t| self.find(&token_digest(t)))
            .cloned()
            .ok_or(AuthError::BadToken)
    }

    /// The identity whose token digest is `digest`. Every configured digest is compared, each
    /// in constant time, with no early exit: how long authentication takes says nothing about
    /// how close a guess came (keys are few: bounded by the config).
    fn find(&self, digest: &[u8; 32]) -> Option<&Identity> {
        use subtle::ConstantTimeEq;
        let mut found = None;
        for (known, identity) in &self.by_token {
            if bool::from(known.ct_eq(digest)) {
                found = Some(identity);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, token: &str, rate: Option<RateConfig>) -> ApiKey {
        ApiKey::with_token(name, token, rate)
    }

    #[test]
    fn a_certificate_names_a_key_without_a_token_unless_two_keys_share_the_name() {
        let keys = [
            key("billing", "t-billing", None),
            key("audit", "t-audit-1", None),
            key("audit", "t-audit-2", None),
        ];
        let ring = KeyRing::new(&keys, RateConfig::default(), None);
        let peer = [10, 0, 0, 1].into();
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let who = ring.authenticate(None, &names(&["x.internal", "billing"]), peer);
        assert_eq!(who.unwrap().name, "billing");
        assert_eq!(
            ring.authenticate(None, &names(&["audit"]), peer),
            Err(AuthError::BadToken),
            "a name two keys share names neither"
        );
        assert_eq!(
            ring.authenticate(None, &names(&["nobody"]), peer),
            Err(AuthError::BadToken)
        );
        let token_wins = ring.authenticate(Some("t-audit-1"), &names(&["billing"]), peer);
        assert_eq!(token_wins.unwrap().name, "audit");
        assert_eq!(
            ring.authenticate(Some("wrong"), &names(&["billing"]), peer),
            Err(AuthError::BadToken),
            "a wrong token is refused whatever the certificate"
        );
    }

    #[test]
    fn each_token_finds_its_own_key_among_many_and_a_near_miss_none() {
        let keys: Vec<ApiKey> = (0..5)
            .map(|i| key(&format!("k{i}"), &format!("token-{i}"), None))
            .collect();
        let ring = KeyRing::new(&keys, RateConfig::default(), None);
        let peer = [10, 0, 0, 1].into();
        for i in 0..5 {
            let who = ring
                .authenticate(Some(&format!("token-{i}")), &[], peer)
                .unwrap();
            assert_eq!(who.name, format!("k{i}"));
        }
        assert_eq!(
            ring.authenticate(Some("token-5"), &[], peer),
            Err(AuthError::BadToken)
        );
    }

    #[test]
    fn a_masked_key_authenticates_the_same_token_and_holds_no_secret() {
        let clear = key("billing", "s3cret-token", None);
        let masked = clear.masked();
        assert_eq!(masked.token, None);
        let hex = masked.token_sha256.clone().unwrap();
        assert_eq!(hex.len(), 64);
        assert!(!hex.contains("s3cret"));
        assert_eq!(masked.digest(), clear.digest());
        let ring = KeyRing::new(&[masked], RateConfig::default(), None);
        let peer = [10, 0, 0, 1].into();
        assert_eq!(
            ring.authenticate(Some("s3cret-token"), &[], peer)
                .unwrap()
                .name,
            "billing"
        );
        assert_eq!(
            ring.authenticate(Some("s3cret-tokeN"), &[], peer),
            Err(AuthError::BadToken)
        );
        // The digest of "abc" (FIPS 180-2), in upper case: hex is read in either case.
        let abc = ApiKey {
            token: None,
            token_sha256: Some(
                "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD".into(),
            ),
            ..key("abc", "", None)
        };
        assert_eq!(abc.digest(), key("abc", "abc", None).digest());
        for bad in [
            ApiKey {
                token_sha256: Some("12".into()),
                ..key("x", "t", None)
            },
            ApiKey {
                token: None,
                ..key("x", "t", None)
            },
            key("x", "", None),
            ApiKey {
                token: None,
                token_sha256: Some("zz".repeat(32)),
                ..key("x", "t", None)
            },
        ] {
            assert!(bad.digest().unwrap_err().contains("\"x\""), "{bad:?}");
        }
    }

    #[test]
    fn without_keys_only_loopback_is_anonymous() {
        let ring = KeyRing::new(&[], RateConfig::default(), None);
        let id = ring.authenticate(None, &[], [127, 0, 0, 1].into()).unwrap();
        assert_eq!(id.name, "anonymous");
        assert_eq!(
            ring.authenticate(Some("x"), &[], [10, 1, 2, 3].into()),
            Err(AuthError::AnonymousNotAllowed)
        );
    }

    #[test]
    fn an_anonymous_section_admits_its_ranges_with_its_permissions_beside_keys() {
        use crate::permissions::{Action, Permission};
        let anonymous = AnonymousConfig {
            allow_from: vec!["10.0.0.0/8".into()],
            permissions: Some(vec![Permission {
                topics: "public".into(),
                allow: vec![Action::Subscribe],
            }]),
        };
        let ring = KeyRing::new(
            &[key("a", "ta", None)],
            RateConfig::default(),
            Some(&anonymous),
        );
        let anon = ring.authenticate(None, &[], [10, 2, 3, 4].into()).unwrap();
        assert_eq!(anon.name, "anonymous");
        assert!(anon.access.grants().allows(Action::Subscribe, "public"));
        assert!(!anon.access.grants().allows(Action::Publish, "public"));
        assert_eq!(
            ring.authenticate(None, &[], [127, 0, 0, 1].into()),
            Err(AuthError::AnonymousNotAllowed),
            "loopback is not in this allow_from"
        );
        assert_eq!(
            ring.authenticate(Some("wrong"), &[], [10, 2, 3, 4].into()),
            Err(AuthError::BadToken),
            "a wrong token is never anonymous"
        );
        let a = ring
            .authenticate(Some("ta"), &[], [10, 2, 3, 4].into())
            .unwrap();
        assert!(a.access.grants().allows(Action::Manage, "anything"));
        assert_eq!(ring.accesses().count(), 2);
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
            None,
        );
        assert_eq!(
            ring.authenticate(Some("ta"), &[], [10, 0, 0, 1].into())
                .unwrap()
                .rate,
            slow
        );
        assert_eq!(
            ring.authenticate(Some("tb"), &[], [127, 0, 0, 1].into())
                .unwrap()
                .rate,
            RateConfig::default()
        );
        assert_eq!(
            ring.authenticate(None, &[], [127, 0, 0, 1].into()),
            Err(AuthError::BadToken)
        );
        assert_eq!(
            ring.authenticate(Some("nope"), &[], [127, 0, 0, 1].into()),
            Err(AuthError::BadToken)
        );
    }
}
