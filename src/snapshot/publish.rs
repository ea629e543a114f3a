//! Store change feed -> compiled snapshot -> atomic swap.
//!
//! One task follows the store's revision feed. For each change it takes a
//! consistent dump, compiles a new [`Snapshot`] on a blocking thread (a big
//! configuration must not stall accept loops), swaps it in, then announces
//! the revision on a `watch` so Admin API writes can answer only once the
//! data plane serves them. The feed coalesces bursts of writes into one
//! rebuild.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Snapshot;
use crate::model::crypt::Keyring;
use crate::stats::Stats;
use crate::store::{Store, StoreError};

/// The current snapshot, readable lock-free by every connection.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// A running publisher.
#[derive(Debug)]
pub struct Publisher {
    /// The snapshot in force.
    pub current: SharedSnapshot,
    /// Revision of the snapshot in force.
    pub published: watch::Receiver<u64>,
}

async fn rebuild(
    store: &Arc<dyn Store>,
    current: &SharedSnapshot,
    stats: &Arc<Stats>,
    keyring: &Arc<Keyring>,
) -> Result<u64, StoreError> {
    let stats = stats.clone();
    let keyring = keyring.clone();
    let mut dump = store.dump().await?;
    let prev = current.load_full();
    let built = tokio::task::spawn_blocking(move || {
        for e in &mut dump.entries {
            let mut v = (*e.value).clone();
            keyring.open(e.kind, &mut v);
            e.value = Arc::new(v);
        }
        Snapshot::build_with(&dump, Some(&prev), &stats)
    })
    .await
    .map_err(|e| StoreError::Unavailable(format!("snapshot build failed: {e}")))?;
    let rev = built.revision;
    tracing::debug!(
        revision = rev,
        routes = built.route_count(),
        "snapshot published"
    );
    current.store(Arc::new(built));
    Ok(rev)
}

/// Build the first snapshot, then keep it current until `cancel`.
pub async fn start(
    store: Arc<dyn Store>,
    stats: Arc<Stats>,
    keyring: Keyring,
    cancel: CancellationToken,
) -> Result<Publisher, StoreError> {
    let current: SharedSnapshot = Arc::new(ArcSwap::from_pointee(Snapshot::empty()));
    let mut changes = store.subscribe();
    changes.borrow_and_update();
    let keyring = Arc::new(keyring);
    let first = rebuild(&store, &current, &stats, &keyring).await?;
    let (tx, rx) = watch::channel(first);
    let shared = current.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                changed = changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    changes.borrow_and_update();
                    match rebuild(&store, &shared, &stats, &keyring).await {
                        Ok(rev) => {
                            tx.send_replace(rev);
                        }
                        Err(e) => tracing::error!(error = %e, "cannot rebuild routes; keeping the previous ones"),
                    }
                }
            }
        }
    });
    Ok(Publisher {
        current,
        published: rx,
    })
}
