//! The topics a bench run creates, and their removal when it ends: after it finishes, fails
//! or is interrupted (Ctrl-C, SIGTERM), unless `--keep`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_client::{Client, ClientError, ClientOptions, ErrorCode};

use super::common::connect;

/// Most topics one bench run may create (every scenario creates a handful: one per policy,
/// probe or offender).
const MAX_CREATED: usize = 64;

/// Connection attempts of the cleanup while the broker is at its connection bound.
const CONNECT_ATTEMPTS: u32 = 5;
/// Longest wait between two of them.
const CONNECT_RETRY_MAX: Duration = Duration::from_secs(1);

/// How long deleting one topic may take.
const DELETE_TIMEOUT: Duration = Duration::from_secs(10);

/// The topics this run created, shared by every task of the run (cheap to clone).
#[derive(Debug, Clone)]
pub struct Created {
    keep: bool,
    names: Arc<Mutex<Vec<String>>>,
}

impl Created {
    /// An empty record; with `keep`, [`Created::remove_all`] leaves the topics in place.
    pub fn new(keep: bool) -> Created {
        Created {
            keep,
            names: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// A fresh topic name for one run: `<prefix>-<pid>-<8 random hex digits>`.
    pub fn fresh_name(prefix: &str) -> String {
        format!(
            "{prefix}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        )
    }

    /// Records `name`, about to be created, for removal. Fails past [`MAX_CREATED`] topics.
    pub fn add(&self, name: &str) -> anyhow::Result<()> {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        anyhow::ensure!(
            names.len() < MAX_CREATED,
            "a bench run creates at most {MAX_CREATED} topics"
        );
        names.push(name.to_owned());
        Ok(())
    }

    /// Deletes (with force) every topic recorded so far and forgets them; a topic already gone
    /// is no error. With `--keep`, deletes nothing and returns the kept names for the caller to
    /// report. Fails on the first topic that could not be deleted (the rest stay recorded).
    pub async fn remove_all(
        &self,
        server: &str,
        options: &ClientOptions,
    ) -> anyhow::Result<Vec<String>> {
        let names = std::mem::take(&mut *self.names.lock().unwrap_or_else(|e| e.into_inner()));
        if self.keep || names.is_empty() {
            return Ok(names);
        }
        let admin = connect_for_cleanup(server, options).await?;
        for (i, name) in names.iter().enumerate() {
            let deleted = tokio::time::timeout(DELETE_TIMEOUT, admin.delete_topic(name, true))
                .await
                .map_err(|_| {
                    anyhow::anyhow!("deleting topic {name} took more than {DELETE_TIMEOUT:?}")
                });
            let failed = match deleted {
                Ok(Ok(()))
                | Ok(Err(ClientError::Broker {
                    code: ErrorCode::UnknownTopic,
                    ..
                })) => None,
                Ok(Err(e)) => Some(anyhow::anyhow!("deleting topic {name}: {e}")),
                Err(e) => Some(e),
            };
            if let Some(e) = failed {
                self.names
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(names[i..].iter().cloned());
                return Err(e);
            }
        }
        Ok(Vec::new())
    }
}

/// Connects for the deletes, trying again (up to [`CONNECT_ATTEMPTS`] times) while the broker
/// refuses at its connection bound: a run that failed there, or that held many connections,
/// may still be closing them.
async fn connect_for_cleanup(server: &str, options: &ClientOptions) -> anyhow::Result<Client> {
    for _ in 1..CONNECT_ATTEMPTS {
        match Client::connect_with(server, options.clone()).await {
            Ok(client) => return Ok(client),
            Err(ClientError::ConnectionRejected { retry_after_ms, .. }) => {
                let wait = retry_after_ms.map_or(CONNECT_RETRY_MAX, Duration::from_millis);
                tokio::time::sleep(wait.min(CONNECT_RETRY_MAX)).await;
            }
            Err(e) => anyhow::bail!("cannot connect to {server}: {e}"),
        }
    }
    connect(server, options).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_fresh_and_the_record_is_bounded() {
        let (a, b) = (Created::fresh_name("bench"), Created::fresh_name("bench"));
        assert_ne!(a, b);
        assert!(
            a.starts_with(&format!("bench-{}-", std::process::id())),
            "{a}"
        );
        let created = Created::new(false);
        for i in 0..MAX_CREATED {
            created.add(&format!("t{i}")).unwrap();
        }
        assert!(created.add("one-too-many").is_err());
    }

    #[tokio::test]
    async fn keep_leaves_the_topics_and_names_them() {
        let created = Created::new(true);
        created.add("bench-1").unwrap();
        let options = ClientOptions::default();
        // Nothing is deleted, so nothing connects: the address is never used.
        let kept = created.remove_all("127.0.0.1:9", &options).await.unwrap();
        assert_eq!(kept, ["bench-1"]);
    }
}
