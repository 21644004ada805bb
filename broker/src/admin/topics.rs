//! `GET /topics` and `GET /topics/{name}`: what `weir topic list` / `weir topic info` show, as
//! JSON, from the topics' in-memory state (no disk access).
//!
//! `GET /topics` answers `{"topics": [TOPIC, ...]}`, sorted by name; `GET /topics/{name}`
//! answers one `TOPIC` with its `recent_drops`, or `404 {"error": "unknown topic NAME"}`. A
//! `TOPIC` is a [`weir_protocol::json::TopicView`] — the schema `weir topic list|info --json`
//! prints too, documented there.
//!
//! `storage.state` is `healthy`, `full` (disk full: publishes refused `storage_full` until
//! space returns), `failed` (a write or fdatasync failed: refused until `weir topic repair` or
//! a restart) or `damaged` (a confirmed record is unreadable; `damaged_at` is its sequence:
//! groups stop there and publishes are refused until `weir topic repair`).
//!
//! Both need the key's `monitor` permission: the list shows only the topics the key may
//! monitor; a topic it may not is `403 {"error", "action", "topic"}`.
//!
//! Bounds: the list holds at most `max_topics` topics of at most `max_groups_per_topic` groups.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use weir_protocol::json::{TopicListView, TopicView};
use weir_protocol::TopicDescription;

use super::responses::{forbidden, unknown_topic};
use crate::broker::Broker;
use crate::keys::Identity;
use crate::permissions::Action;

/// `GET /topics`: every topic the key may `monitor`, sorted by name.
pub(super) async fn list(
    State(broker): State<Broker>,
    Extension(identity): Extension<Identity>,
) -> Json<TopicListView> {
    let grants = identity.access.grants();
    let topics = broker
        .list_topics()
        .into_iter()
        .filter(|info| grants.allows(Action::Monitor, &info.config.name))
        .map(TopicView::from)
        .collect();
    Json(TopicListView { topics })
}

/// `GET /topics/{name}`: one topic; 403 when the key may not `monitor` it (whether or not it
/// exists), else 404 when there is no such topic.
pub(super) async fn show(
    State(broker): State<Broker>,
    Extension(identity): Extension<Identity>,
    Path(name): Path<String>,
) -> Response {
    if let Some(forbidden) = forbidden(&broker, &identity, Action::Monitor, &name) {
        return forbidden;
    }
    match broker.topic(&name) {
        Some(topic) => {
            let (info, recent_drops) = topic.describe();
            let description = TopicDescription {
                req: 0,
                info,
                recent_drops,
            };
            Json(TopicView::from(description)).into_response()
        }
        None => unknown_topic(&name),
    }
}
