//! `weir topic update` and `weir group update`: changing a live topic's bounds and policies,
//! or a group's settings, durably.

use weir_protocol::{GroupConfig, GroupSpec, GroupUpdate, Limit, TopicConfig, TopicUpdate};

use super::{topic_dir, Broker};
use crate::storage::manifest;
use crate::topic::UpdateGroupError;

/// Why a topic or group could not be updated. Nothing changed, except where
/// [`UpdateError::NotStored`] says otherwise.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// There is no such topic.
    #[error("unknown topic {0}")]
    Unknown(String),
    /// The topic has no such group.
    #[error("topic {topic} has no group {group}")]
    UnknownGroup {
        /// The topic.
        topic: String,
        /// The group.
        group: String,
    },
    /// A group's new settings apply, but the state store could not be flushed: they are not
    /// yet durable (the periodic state flush retries).
    #[error("group {group} updated, but its state could not be stored: {reason}; the new settings apply now and the periodic state flush retries storing them")]
    NotStored {
        /// The group.
        group: String,
        /// Why.
        reason: String,
    },
    /// The update changes nothing, or a setting it asks for is invalid.
    #[error("{0}")]
    Invalid(String),
    /// A bound asks for more than the broker-wide ceiling.
    #[error("a topic bound asks for more than the broker's {} ({})", .0.name, .0.value)]
    OverCeiling(Limit),
    /// Storage failed writing the new settings: the topic keeps its old ones.
    #[error("cannot update topic {topic}: {reason}; its settings are unchanged")]
    Failed {
        /// The topic.
        topic: String,
        /// Why.
        reason: String,
    },
}

impl Broker {
    /// Applies `update` to topic `name` and returns its configuration now. The new settings
    /// are checked as a create's are, written durably, and only then applied live
    /// ([`crate::topic::Topic::update`] says what each change does to what the topic holds).
    ///
    /// The topic's manifest is the commit point: it is replaced atomically (a failure there
    /// changes nothing and is answered); then the state record is rewritten. Start-up trusts
    /// the manifest over a differing record, so a crash, or a state store failing, between
    /// the two still restarts with the new settings (the record is rewritten from the manifest
    /// then; a failure here is logged, not answered). Serialised with creates and deletes.
    pub(crate) async fn update_topic(
        &self,
        name: &str,
        update: &TopicUpdate,
    ) -> Result<TopicConfig, UpdateError> {
        if update.is_empty() {
            return Err(UpdateError::Invalid(
                "the update changes nothing: name at least one setting".into(),
            ));
        }
        let _creating = self.shared.creating.lock().await;
        let topic = self
            .topic(name)
            .ok_or_else(|| UpdateError::Unknown(name.to_string()))?;
        let current = topic.config();
        let config = self
            .shared
            .config
            .check_topic(update.apply_to(&current))
            .map_err(UpdateError::Invalid)?;
        if let Some(limit) = self.shared.config.topic_ceiling_exceeded(&config) {
            return Err(UpdateError::OverCeiling(limit));
        }
        if config == current {
            return Ok(config);
        }
        let shared = self.shared.clone();
        let saving = config.clone();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            let fs = shared.env.fs.as_ref();
            let dir = topic_dir(&shared.config, &saving.name);
            let mut m = manifest::read(fs, &dir)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("{} has no manifest", dir.display()))?;
            m.config = saving;
            manifest::write(fs, &dir, &m).map_err(|e| e.to_string())?;
            if let Err(e) = shared.env.store.save_topic(&m.config, &m.identity) {
                tracing::warn!(topic = %m.config.name, error = %e, "topic updated in its manifest but not in the state store: the next start rewrites the record from the manifest");
            }
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|saved| saved)
        .map_err(|reason| UpdateError::Failed {
            topic: name.to_string(),
            reason,
        })?;
        topic.update(config.clone());
        tracing::info!(topic = %name, changed = ?current.differences(&config), "topic updated");
        Ok(config)
    }

    /// Changes group `group` of topic `topic` to `update` applied to its settings, checked as
    /// a new group's are (nonzero timeout and attempts, a valid dead-letter topic other than the
    /// topic), then stores the group's state and flushes the state store before answering.
    /// What each change does to deliveries in flight: [`GroupUpdate`].
    pub(crate) async fn update_group(
        &self,
        topic: &str,
        group: &str,
        update: &GroupUpdate,
    ) -> Result<GroupConfig, UpdateError> {
        if update.is_empty() {
            return Err(UpdateError::Invalid(
                "the update changes nothing: name at least one setting".into(),
            ));
        }
        let handle = self
            .topic(topic)
            .ok_or_else(|| UpdateError::Unknown(topic.to_string()))?;
        let check = |c: &GroupConfig| {
            let spec = GroupSpec {
                ack_timeout_ms: Some(c.ack_timeout_ms),
                max_attempts: Some(c.max_attempts),
                dead_letter_topic: Some(c.dead_letter_topic.clone()),
                ..GroupSpec::default()
            };
            self.shared.config.resolve_group(topic, &spec)
        };
        let config = handle
            .update_group(group, update, check)
            .map_err(|e| match e {
                UpdateGroupError::Unknown => UpdateError::UnknownGroup {
                    topic: topic.to_string(),
                    group: group.to_string(),
                },
                UpdateGroupError::Invalid(why) => UpdateError::Invalid(why),
            })?;
        tracing::info!(topic, group, ?config, "group updated");
        let store = self.shared.env.store.clone();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            handle.save_dirty_groups().map_err(|e| e.to_string())?;
            store.flush().map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|saved| saved)
        .map_err(|reason| UpdateError::NotStored {
            group: group.to_string(),
            reason,
        })?;
        Ok(config)
    }
}
