//! `weir topic update`: changing a live topic's bounds and policies, durably.

use weir_protocol::{Limit, TopicConfig, TopicUpdate};

use super::{topic_dir, Broker};
use crate::storage::manifest;

/// Why a topic could not be updated. Nothing changed in any case.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// There is no such topic.
    #[error("unknown topic {0}")]
    Unknown(String),
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
}
