//! Permissions: which actions a key (or anonymous) may take on which topics.
//!
//! A key's `permissions` is a list of rules, `{ topics = "orders.*", allow = ["publish",
//! "subscribe"] }`. A rule's `topics` is an exact topic name, or a prefix ending in `*`
//! (`orders.*` matches `orders.eu` and `orders.`; `*` alone matches every topic); a `*`
//! anywhere else is refused at start. An action is allowed on a topic when any rule that
//! matches the topic allows it. A key with no `permissions` field may do everything (what
//! keys could do before permissions existed); `permissions = []` may do nothing.
//!
//! **Dead-letter topics follow their topic**: `<topic>.dlq` (the default dead-letter topic of
//! `<topic>`) is allowed an action whenever `<topic>` is, besides whatever rules match
//! `<topic>.dlq` itself. A group that names another dead-letter topic needs `publish` on it
//! (the broker writes there on the group's behalf), and subscribing to it needs its own rule.
//!
//! Rules are compiled once per key at start ([`Grants`]); a check is a walk over the key's
//! rules — a handful of byte-prefix comparisons — and connections cache their last publish
//! decision, so the publish hot path pays one string comparison.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::metrics::Counter;
use crate::refusal_log::RefusalLog;

/// The suffix of a default dead-letter topic name (`<topic>.dlq`; see
/// [`default_dead_letter_topic`](crate::config::default_dead_letter_topic)). A topic name too
/// long to take it gets a hashed dead-letter name, which needs its own rule.
const DEAD_LETTER_SUFFIX: &str = ".dlq";

pub use weir_protocol::Action;

/// This action's bit in an [`ActionSet`].
fn bit(action: Action) -> u8 {
    1 << (action as u8)
}

/// One rule of a key's `permissions`: the actions `allow`ed on the topics `topics` matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permission {
    /// An exact topic name, or a prefix ending in `*` (`*` alone: every topic).
    pub topics: String,
    /// The actions allowed: `publish`, `subscribe`, `manage`, `monitor`. An unknown one fails
    /// the config at start.
    pub allow: Vec<Action>,
}

/// A set of actions, one bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ActionSet(u8);

impl ActionSet {
    fn of(actions: &[Action]) -> ActionSet {
        ActionSet(actions.iter().fold(0, |bits, a| bits | bit(*a)))
    }

    fn contains(self, action: Action) -> bool {
        self.0 & bit(action) != 0
    }
}

/// A compiled topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// This topic only.
    Exact(String),
    /// Every topic starting with this prefix (empty: every topic).
    Prefix(String),
}

impl Pattern {
    /// Compiles `text`; an error says what is wrong with it.
    fn parse(text: &str) -> Result<Pattern, String> {
        let (body, prefix) = match text.strip_suffix('*') {
            Some(body) => (body, true),
            None => (text, false),
        };
        let chars_ok = body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !chars_ok || (!prefix && body.is_empty()) || body.len() > crate::names::MAX_NAME_BYTES {
            return Err(format!(
                "topics {text:?} must be a topic name ([A-Za-z0-9._-]) or a prefix ending in `*`"
            ));
        }
        Ok(if prefix {
            Pattern::Prefix(body.into())
        } else {
            Pattern::Exact(body.into())
        })
    }

    fn matches(&self, topic: &str) -> bool {
        match self {
            Pattern::Exact(name) => name == topic,
            Pattern::Prefix(prefix) => topic.starts_with(prefix.as_str()),
        }
    }
}

/// A key's compiled permissions: what [`Grants::allows`] checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    rules: Vec<(Pattern, ActionSet)>,
}

impl Grants {
    /// Every action on every topic: a key without a `permissions` field.
    pub fn all() -> Grants {
        Grants {
            rules: vec![(Pattern::Prefix(String::new()), ActionSet::of(&Action::ALL))],
        }
    }

    /// Compiles `permissions` (`None`: [`Grants::all`]); an error names the rule (by its
    /// index and pattern) and what is wrong with it.
    pub fn compile(permissions: Option<&[Permission]>) -> Result<Grants, String> {
        let Some(permissions) = permissions else {
            return Ok(Grants::all());
        };
        let rules = permissions
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let pattern = Pattern::parse(&p.topics)
                    .map_err(|e| format!("permissions[{i}] ({:?}): {e}", p.topics))?;
                Ok((pattern, ActionSet::of(&p.allow)))
            })
            .collect::<Result<_, String>>()?;
        Ok(Grants { rules })
    }

    /// Whether these permissions allow `action` on `topic`: a rule matching `topic` allows
    /// it, or `topic` is `<t>.dlq` and `action` is allowed on `<t>` (its default dead-letter
    /// topic follows it).
    pub fn allows(&self, action: Action, topic: &str) -> bool {
        self.direct(action, topic)
            || topic
                .strip_suffix(DEAD_LETTER_SUFFIX)
                .is_some_and(|base| !base.is_empty() && self.direct(action, base))
    }

    /// Whether `action` is allowed on every topic (a `topics = "*"` rule allows it): what
    /// routes about the whole broker (`/metrics`) need.
    pub fn allows_everywhere(&self, action: Action) -> bool {
        self.rules.iter().any(|(pattern, set)| {
            set.contains(action) && *pattern == Pattern::Prefix(String::new())
        })
    }

    fn direct(&self, action: Action, topic: &str) -> bool {
        self.rules
            .iter()
            .any(|(pattern, set)| set.contains(action) && pattern.matches(topic))
    }
}

/// One key's (or anonymous's) access: its name, its compiled permissions, and its refusals
/// counted per action (`weir_forbidden_total{key,action}`) and logged at most once a second.
/// One per configured key, shared by all its connections and HTTP requests.
#[derive(Debug)]
pub struct Access {
    name: String,
    grants: Grants,
    denied: [Counter; 4],
    log: RefusalLog<()>,
}

/// A refused action: what [`Access::check`] answers, and what a refusal says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forbidden {
    /// The key's name (`anonymous` without one).
    pub key: String,
    /// The action it may not take.
    pub action: Action,
    /// The topic it may not take it on.
    pub topic: String,
}

impl fmt::Display for Forbidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let preposition = match self.action {
            Action::Publish => "to",
            Action::Subscribe => "to",
            Action::Manage | Action::Monitor => "",
        };
        let key = if self.key == ANONYMOUS {
            "anonymous clients".to_string()
        } else {
            format!("key {}", self.key)
        };
        if preposition.is_empty() {
            write!(f, "forbidden: {key} may not {} {}", self.action, self.topic)
        } else {
            write!(
                f,
                "forbidden: {key} may not {} {preposition} {}",
                self.action, self.topic
            )
        }
    }
}

/// Two accesses are equal when they are the same key with the same permissions (refusal
/// counts aside).
impl PartialEq for Access {
    fn eq(&self, other: &Access) -> bool {
        self.name == other.name && self.grants == other.grants
    }
}

impl Eq for Access {}

impl Access {
    /// The access of the key named `name` with `grants`.
    pub fn new(name: &str, grants: Grants) -> Access {
        Access {
            name: name.into(),
            grants,
            denied: Default::default(),
            log: RefusalLog::new(Duration::from_secs(1), 1),
        }
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key's permissions.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// `Ok` when the key may take `action` on `topic`; else the refusal, counted and (at most
    /// once a second for this key, with the number suppressed since) logged.
    pub fn check(&self, action: Action, topic: &str, now: Instant) -> Result<(), Forbidden> {
        if self.grants.allows(action, topic) {
            return Ok(());
        }
        Err(self.refuse(action, topic, now))
    }

    /// Counts and (rate-limited) logs a refusal of `action` on `topic`, and returns it: for
    /// callers that decided themselves (a cached decision).
    pub fn refuse(&self, action: Action, topic: &str, now: Instant) -> Forbidden {
        self.denied[action as usize].add(1);
        if let Some(suppressed) = self.log.note((), now) {
            tracing::warn!(key = %self.name, action = %action, topic, suppressed, "forbidden");
        }
        Forbidden {
            key: self.name.clone(),
            action,
            topic: topic.into(),
        }
    }

    /// How many times `action` was refused to this key.
    pub fn denied(&self, action: Action) -> u64 {
        self.denied[action as usize].get()
    }
}

/// An address range of `[anonymous] allow_from`: `127.0.0.0/8`, `::1/128`, or a bare address
/// (itself only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `text`; an error says why it is not a CIDR range.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let bad = || format!("{text:?} is not an address range such as 127.0.0.0/8 or ::1/128");
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let network: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(len) => len.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { network, prefix })
    }

    /// Whether `ip` lies in this range (an IPv4-mapped IPv6 address counts as its IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The name anonymous clients go by in logs, metrics and refusals.
pub const ANONYMOUS: &str = "anonymous";

/// Who may connect without a token, and what they may do (`[anonymous]`).
///
/// Without this section the broker behaves as before it existed: with no `[[keys]]`,
/// anonymous clients from loopback may do everything; with keys, a token is required. With
/// it, a client that presents no token is anonymous when its address is in `allow_from`, and
/// may do what `permissions` allows (every action when the field is left out). A wrong token
/// is refused either way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnonymousConfig {
    /// Address ranges anonymous clients may come from (CIDR). Default loopback:
    /// `["127.0.0.0/8", "::1/128"]`; `[]` admits no anonymous client.
    pub allow_from: Vec<String>,
    /// What anonymous clients may do; left out: every action on every topic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<Permission>>,
}

impl Default for AnonymousConfig {
    fn default() -> Self {
        AnonymousConfig {
            allow_from: vec!["127.0.0.0/8".into(), "::1/128".into()],
            permissions: None,
        }
    }
}

/// Anonymous access compiled: the ranges and the grants.
#[derive(Debug, Clone)]
pub(crate) struct Anonymous {
    /// Where anonymous clients may come from.
    pub(crate) allow_from: Vec<Cidr>,
    /// What they may do.
    pub(crate) access: std::sync::Arc<Access>,
}

impl Anonymous {
    /// Compiles `config`; an error names the entry at fault (`anonymous.allow_from[1]`,
    /// `anonymous.permissions[0]`).
    pub(crate) fn compile(config: &AnonymousConfig) -> Result<Anonymous, String> {
        let allow_from = config
            .allow_from
            .iter()
            .enumerate()
            .map(|(i, c)| Cidr::parse(c).map_err(|e| format!("anonymous.allow_from[{i}]: {e}")))
            .collect::<Result<_, _>>()?;
        let grants =
            Grants::compile(config.permissions.as_deref()).map_err(|e| format!("anonymous.{e}"))?;
        Ok(Anonymous {
            allow_from,
            access: std::sync::Arc::new(Access::new(ANONYMOUS, grants)),
        })
    }

    /// Today's default: loopback, every action.
    pub(crate) fn loopback() -> Anonymous {
        Anonymous {
            allow_from: vec![
                Cidr {
                    network: IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0)),
                    prefix: 8,
                },
                Cidr {
                    network: IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
                    prefix: 128,
                },
            ],
            access: std::sync::Arc::new(Access::new(ANONYMOUS, Grants::all())),
        }
    }

    /// Whether a client at `ip` may be anonymous.
    pub(crate) fn admits(&self, ip: IpAddr) -> bool {
        self.allow_from.iter().any(|c| c.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(rules: &[(&str, &[Action])]) -> Grants {
        let perms: Vec<Permission> = rules
            .iter()
            .map(|(topics, allow)| Permission {
                topics: (*topics).into(),
                allow: allow.to_vec(),
            })
            .collect();
        Grants::compile(Some(&perms)).unwrap()
    }

    #[test]
    fn exact_prefix_and_star_patterns_match_what_they_say() {
        use Action::*;
        let g = grants(&[
            ("orders.*", &[Publish, Subscribe]),
            ("audit", &[Subscribe]),
            ("*", &[Monitor]),
        ]);
        assert!(g.allows(Publish, "orders.eu"));
        assert!(g.allows(Publish, "orders."));
        assert!(!g.allows(Publish, "orders"), "the prefix includes the dot");
        assert!(!g.allows(Publish, "ordersx"));
        assert!(g.allows(Subscribe, "audit"));
        assert!(!g.allows(Subscribe, "audit2"), "exact means exact");
        assert!(!g.allows(Publish, "audit"));
        assert!(g.allows(Monitor, "anything"));
        assert!(!g.allows(Manage, "orders.eu"));
        assert!(g.allows_everywhere(Monitor) && !g.allows_everywhere(Publish));
        assert!(Grants::all().allows(Manage, "x"));
        let none = Grants::compile(Some(&[])).unwrap();
        assert!(Action::ALL.iter().all(|a| !none.allows(*a, "x")));
        assert_eq!(Grants::compile(None).unwrap(), Grants::all());
    }

    #[test]
    fn a_default_dead_letter_topic_follows_its_topic() {
        use Action::*;
        let g = grants(&[("orders", &[Subscribe]), ("pay.*", &[Publish])]);
        assert!(g.allows(Subscribe, "orders.dlq"));
        assert!(!g.allows(Publish, "orders.dlq"));
        assert!(g.allows(Publish, "pay.eu.dlq"));
        assert!(!g.allows(Subscribe, "other.dlq"));
        assert!(!g.allows(Subscribe, ".dlq"));
    }

    #[test]
    fn bad_patterns_and_actions_are_refused_naming_the_rule() {
        for bad in ["", "or*ders", "*.eu", "orders/eu", "**"] {
            let err = Grants::compile(Some(&[Permission {
                topics: bad.into(),
                allow: vec![Action::Publish],
            }]))
            .unwrap_err();
            assert!(err.starts_with("permissions[0]"), "{bad}: {err}");
        }
        let err = toml::from_str::<Permission>("topics = \"a\"\nallow = [\"publsh\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("publsh"), "{err}");
    }

    #[test]
    fn a_refusal_names_key_action_and_topic_and_is_counted() {
        let access = Access::new("billing", grants(&[("orders", &[Action::Subscribe])]));
        let now = Instant::now();
        assert!(access.check(Action::Subscribe, "orders", now).is_ok());
        let refused = access.check(Action::Publish, "orders", now).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "forbidden: key billing may not publish to orders"
        );
        access.check(Action::Publish, "orders", now).unwrap_err();
        let manage = access.check(Action::Manage, "orders", now).unwrap_err();
        assert_eq!(
            manage.to_string(),
            "forbidden: key billing may not manage orders"
        );
        assert_eq!(access.denied(Action::Publish), 2);
        assert_eq!(access.denied(Action::Manage), 1);
        assert_eq!(access.denied(Action::Subscribe), 0);
        let anon = Access::new(ANONYMOUS, Grants::compile(Some(&[])).unwrap());
        let refused = anon.check(Action::Monitor, "x", now).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "forbidden: anonymous clients may not monitor x"
        );
    }

    #[test]
    fn cidr_ranges_contain_their_addresses() {
        let lo = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(lo.contains("127.1.2.3".parse().unwrap()));
        assert!(lo.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!lo.contains("128.0.0.1".parse().unwrap()));
        assert!(!lo.contains("::1".parse().unwrap()));
        let v6 = Cidr::parse("::1/128").unwrap();
        assert!(v6.contains("::1".parse().unwrap()));
        assert!(!v6.contains("::2".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("10.9.8.7".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.7")
            .unwrap()
            .contains("10.0.0.7".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::/129", "nope/8", "10.0.0.0/x", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
