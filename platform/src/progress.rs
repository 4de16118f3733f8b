//! How far the read models are, and waiting until they include a position.
//!
//! The projector stores, per event-topic partition, the next offset to read in
//! `projection_offsets` and sends `NOTIFY projection_progress` in the same transaction.
//! Services keep a copy of those offsets current from the notifications, and reload the
//! table every second as well in case a notification was missed while reconnecting.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;

/// The projection whose progress gates command responses and `X-Min-Position`.
pub const READ_MODELS: &str = "read_models";

/// The `NOTIFY` channel the projector signals on.
pub const CHANNEL: &str = "projection_progress";

/// A place in the event log: the read models include it once their next offset for
/// `partition` is at least `offset`. Written as `<partition>-<offset>`; clients treat it
/// as opaque.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.partition, self.offset)
    }
}

impl FromStr for Position {
    type Err = &'static str;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const INVALID: &str = "expected a position returned by a command, such as `3-1042`";
        let (partition, offset) = text.trim().split_once('-').ok_or(INVALID)?;
        let partition = partition.parse().map_err(|_| INVALID)?;
        let offset = offset.parse().map_err(|_| INVALID)?;
        if partition < 0 || offset < 0 {
            return Err(INVALID);
        }
        Ok(Self { partition, offset })
    }
}

/// A live view of the read models' next offsets per partition of the event topic.
#[derive(Clone)]
pub struct ProjectionProgress {
    offsets: watch::Receiver<HashMap<i32, i64>>,
}

impl ProjectionProgress {
    /// Loads the stored offsets and starts following the projector's notifications.
    pub async fn start(pool: PgPool, events_topic: String) -> anyhow::Result<Self> {
        let initial = load(&pool, &events_topic).await?;
        let (sender, offsets) = watch::channel(initial);
        tokio::spawn(follow(pool, events_topic, sender));
        Ok(Self { offsets })
    }

    /// Returns true when the read models include `position`.
    pub fn includes(&self, position: Position) -> bool {
        includes(&self.offsets.borrow(), position)
    }

    /// Waits until the read models include `position`, at most `timeout`. Returns whether
    /// they do.
    pub async fn wait_for(&self, position: Position, timeout: Duration) -> bool {
        let mut offsets = self.offsets.clone();
        let reached = async move {
            offsets
                .wait_for(|offsets| includes(offsets, position))
                .await
                .is_ok()
        };
        tokio::time::timeout(timeout, reached)
            .await
            .unwrap_or(false)
    }
}

fn includes(offsets: &HashMap<i32, i64>, position: Position) -> bool {
    offsets
        .get(&position.partition)
        .is_some_and(|next| *next >= position.offset)
}

async fn load(pool: &PgPool, events_topic: &str) -> anyhow::Result<HashMap<i32, i64>> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, next_offset FROM projection_offsets WHERE projection = $1 AND topic = $2",
    )
    .bind(READ_MODELS)
    .bind(events_topic)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Keeps `sender` current until every receiver is gone.
async fn follow(pool: PgPool, events_topic: String, sender: watch::Sender<HashMap<i32, i64>>) {
    let mut failures: u64 = 0;
    while !sender.is_closed() {
        if let Err(error) = listen(&pool, &events_topic, &sender).await {
            failures += 1;
            // One line per failure would flood the log while PostgreSQL is down.
            if failures.is_power_of_two() {
                tracing::warn!(
                    error = format!("{error:#}"),
                    failures,
                    "projection progress listener failed; retrying"
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

async fn listen(
    pool: &PgPool,
    events_topic: &str,
    sender: &watch::Sender<HashMap<i32, i64>>,
) -> anyhow::Result<()> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    loop {
        let reloaded = load(pool, events_topic).await?;
        sender.send_if_modified(|offsets| merge(offsets, reloaded));
        if sender.is_closed() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Ok(notification) = tokio::time::timeout_at(deadline, listener.recv()).await {
            let notification = notification?;
            let Ok(update) = serde_json::from_str::<ProgressNotice>(notification.payload()) else {
                continue;
            };
            if update.topic == events_topic {
                sender.send_if_modified(|offsets| {
                    merge(
                        offsets,
                        HashMap::from([(update.partition, update.next_offset)]),
                    )
                });
            }
        }
    }
}

/// Raises the stored offsets to `update`'s, never lowering one. Returns whether any rose.
fn merge(offsets: &mut HashMap<i32, i64>, update: HashMap<i32, i64>) -> bool {
    let mut changed = false;
    for (partition, next) in update {
        let entry = offsets.entry(partition).or_insert(-1);
        if next > *entry {
            *entry = next;
            changed = true;
        }
    }
    changed
}

/// The payload of a `projection_progress` notification.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ProgressNotice {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_round_trips() {
        let position = Position {
            partition: 3,
            offset: 1042,
        };
        assert_eq!(position.to_string(), "3-1042");
        assert_eq!("3-1042".parse::<Position>(), Ok(position));
    }

    #[test]
    fn position_rejects_garbage() {
        for text in ["", "3", "a-1", "3-b", "-1-2", "3-"] {
            assert!(text.parse::<Position>().is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn merge_never_lowers_an_offset() {
        let mut offsets = HashMap::from([(0, 10)]);
        assert!(!merge(&mut offsets, HashMap::from([(0, 5)])));
        assert_eq!(offsets[&0], 10);
        assert!(merge(&mut offsets, HashMap::from([(0, 11), (1, 2)])));
        assert_eq!(offsets[&1], 2);
    }

    #[test]
    fn includes_needs_the_partition() {
        let offsets = HashMap::from([(0, 10)]);
        assert!(includes(
            &offsets,
            Position {
                partition: 0,
                offset: 10
            }
        ));
        assert!(!includes(
            &offsets,
            Position {
                partition: 0,
                offset: 11
            }
        ));
        assert!(!includes(
            &offsets,
            Position {
                partition: 1,
                offset: 0
            }
        ));
    }
}
