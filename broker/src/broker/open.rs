//! Opening a broker: recovering its topics from disk, then starting the tasks that run beside
//! the connections — the state flusher, the stall watcher and the dead-letter mover.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{topic_dir, Broker, OpenError, Shared};
use crate::admission::Admission;
use crate::auth_limit::AuthFailures;
use crate::clock::Clock;
use crate::config::Config;
use crate::keys::KeyRing;
use crate::metrics::Metrics;
use crate::storage::disk::DiskBudget;
use crate::storage::reconcile::{self, Reconciled};
use crate::topic::{Topic, TopicEnv};

impl Broker {
    /// Opens the data directory, recovers every topic (its log, its groups, their cursors and
    /// unacked messages) and starts the topics' writers and dispatchers and the state flusher.
    /// Broker time is real time ([`Clock::system`]).
    pub async fn open(config: Config) -> Result<Broker, OpenError> {
        Self::open_on(config, crate::storage::fs::os(), Clock::system()).await
    }

    /// [`Broker::open`] with topic files written through `fs` (tests inject faults there) and
    /// ack deadlines, nack delays and rate windows on `clock` (tests pass [`Clock::paused`]
    /// and advance it; see [`crate::clock`] for what stays on real time).
    pub async fn open_on(
        config: Config,
        fs: crate::storage::fs::Fs,
        clock: Clock,
    ) -> Result<Broker, OpenError> {
        config.validate()?;
        let (config, env, topics, done) = tokio::task::spawn_blocking({
            let runtime = tokio::runtime::Handle::current();
            move || recover(config, runtime, fs, clock)
        })
        .await
        .map_err(|e| OpenError::Join(e.to_string()))??;
        tracing::info!(
            topics = topics.len(),
            restored_from_manifest = done.restored.len(),
            groups_dropped = done.groups_dropped,
            deletes_finished = done.deletes_finished,
            manifests_written = done.migrated,
            data_dir = %config.data_dir.display(),
            "broker state recovered"
        );
        let broker = Broker {
            shared: Arc::new(Shared {
                keys: KeyRing::new(&config.keys, config.default_rate, config.anonymous.as_ref()),
                auth_failures: AuthFailures::new(config.limits.max_auth_failures_per_s),
                config,
                env,
                topics: RwLock::new(topics),
                creating: tokio::sync::Mutex::new(()),
                next_connection: AtomicU64::new(1),
                shutting_down: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        broker
            .shared
            .env
            .tasks
            .spawn(flush_state_periodically(broker.clone()));
        broker.shared.env.tasks.spawn(watch_stalls(broker.clone()));
        broker
            .shared
            .env
            .tasks
            .spawn(crate::dead_letter::run(broker.clone()));
        Ok(broker)
    }
}

/// Persists changed group state every `state_flush_ms` until the broker stops. A failed flush
/// is counted (`weir_state_flush_failures_total`) and shown (`weir_state_store_failing`); it is
/// logged once when flushes start failing and once when they work again, never per period.
/// Meanwhile the group changes stay in memory (marked dirty) and are written by the next flush
/// that works: a crash in between costs redeliveries, never messages.
async fn flush_state_periodically(broker: Broker) {
    let period = Duration::from_millis(broker.shared.config.storage.state_flush_ms);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let metrics = broker.shared.env.metrics.clone();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = broker.shared.env.stop.cancelled() => return,
        }
        let b = broker.clone();
        let owed = metrics.state_store_failing.load(Ordering::Relaxed);
        let result = tokio::task::spawn_blocking(move || b.save_state(owed))
            .await
            .map_err(|e| e.to_string())
            .and_then(|saved| saved.map_err(|e| e.to_string()));
        let was_failing = metrics
            .state_store_failing
            .swap(result.is_err(), Ordering::Relaxed);
        match result {
            Ok(()) if was_failing => tracing::info!("persisting group state works again"),
            Ok(()) => {}
            Err(e) => {
                metrics.state_flush_failures.add(1);
                if !was_failing {
                    tracing::error!(error = %e, "persisting group state failed: cursors and acks stay in memory until a flush works (a crash meanwhile means redeliveries)");
                }
            }
        }
    }
}

/// Checks every topic for stalled groups and subscribers, a few times per `stall_warn_ms`.
async fn watch_stalls(broker: Broker) {
    let after = Duration::from_millis(broker.shared.config.limits.stall_warn_ms);
    let mut ticker = tokio::time::interval((after / 4).max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = broker.shared.env.stop.cancelled() => return,
        }
        let now = std::time::Instant::now();
        for topic in broker.topics() {
            topic.check_stalls(now, after);
        }
    }
}

type Recovered = (Config, TopicEnv, BTreeMap<String, Arc<Topic>>, Reconciled);

/// Opens the store, reconciles it with the topic directories (see
/// [`crate::storage::reconcile`]) and opens every topic, every file through `fs`, its groups'
/// time on `clock`. Blocking.
/// The configuration comes back with `storage.max_bytes` resolved (its default taken now, see
/// [`crate::storage::disk`]).
fn recover(
    mut config: Config,
    runtime: tokio::runtime::Handle,
    fs: crate::storage::fs::Fs,
    clock: Clock,
) -> Result<Recovered, OpenError> {
    let topics_dir = config.data_dir.join("topics");
    fs.create_dir_all(&topics_dir)
        .map_err(|source| OpenError::DataDir {
            path: topics_dir.clone(),
            source,
        })?;
    config.resolve_storage_budget();
    let disk = Arc::new(DiskBudget::new(
        &config.data_dir,
        config.storage.max_bytes.unwrap_or(u64::MAX),
        config.storage.min_free_bytes,
    ));
    let state_dir = config.data_dir.join("state");
    let (store, mut done) = reconcile::recover(
        fs.as_ref(),
        &state_dir,
        &topics_dir,
        config.storage.state_cache_bytes,
    )?;
    let store = store.checked_by(fs.clone(), state_dir);
    let env = TopicEnv {
        admission: Arc::new(Admission::new(&config, clock.clone())),
        store,
        metrics: Arc::new(Metrics::default()),
        tasks: TaskTracker::new(),
        stop: CancellationToken::new(),
        stopping: CancellationToken::new(),
        runtime,
        dead_letters: Arc::new(tokio::sync::Notify::new()),
        disk,
        fs,
        clock,
    };
    let mut topics = BTreeMap::new();
    for topic_config in std::mem::take(&mut done.topics) {
        let name = topic_config.name.clone();
        let dir = topic_dir(&config, &name);
        let topic =
            Topic::open(topic_config, &dir, &config, &env).map_err(|source| OpenError::Topic {
                name: name.clone(),
                source,
            })?;
        topics.insert(name, topic);
    }
    Ok((config, env, topics, done))
}
