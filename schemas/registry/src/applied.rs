//! The in-memory [`State`] as applied from the schemas topic, with the offset it has reached.
//! The tailer (`kafka`) is its only writer; the store and the handlers read it and wait on the
//! offset. Kept apart from both so neither depends on the other through it.

use std::time::Duration;

use tokio::sync::{watch, RwLock, RwLockReadGuard};

use crate::records::LogRecord;
use crate::state::State;

/// What the tailer writes and requests read.
#[derive(Debug)]
pub(crate) struct AppliedState {
    state: RwLock<State>,
    /// The next offset to apply: everything below it is in `state`.
    applied: watch::Sender<i64>,
}

impl AppliedState {
    /// `state` with nothing of the topic applied yet.
    pub(crate) fn new(state: State) -> Self {
        Self {
            state: RwLock::new(state),
            applied: watch::Sender::new(0),
        }
    }

    pub(crate) async fn apply(&self, record: LogRecord) {
        self.state.write().await.apply(record);
    }

    /// The state, for reads. Hold it only while building an answer: the tailer waits for it.
    pub(crate) async fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().await
    }

    /// Moves the applied offset forward (never back).
    pub(crate) fn advance(&self, next: i64) {
        self.applied.send_if_modified(|current| {
            let moved = next > *current;
            if moved {
                *current = next;
            }
            moved
        });
    }

    pub(crate) fn applied(&self) -> i64 {
        *self.applied.borrow()
    }

    /// Waits until everything below `target` is applied; `false` on timeout.
    pub(crate) async fn wait_applied(&self, target: i64, timeout: Duration) -> bool {
        let mut applied = self.applied.subscribe();
        let waited = tokio::time::timeout(timeout, applied.wait_for(|next| *next >= target)).await;
        // `wait_for` returns a guard on the value; holding it would block the tailer.
        matches!(waited, Ok(Ok(_)))
    }
}
