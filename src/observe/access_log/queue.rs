//! The worker side of the access log: each worker thread formats its lines
//! into a batch of its own and ships the batch to the writer thread once
//! the worker has run everything else that was ready, so a busy worker
//! sends one batch per turn of its event loop rather than one per request.
//! Shipping never waits: a full queue drops the batch and counts its lines.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Inner;
use crate::config::AccessLogFormat;

/// A batch this large is shipped at once, not at the end of the turn.
const SHIP_AT_BYTES: usize = 64 * 1024;
/// What a new batch reserves: a few lines' worth.
const BATCH_START_BYTES: usize = 2048;

/// Lines waiting on one thread, and where they go.
#[derive(Default)]
struct Batch {
    sink: Option<Arc<Inner>>,
    buf: Vec<u8>,
    lines: u64,
    /// A task to ship this batch is spawned and has not run yet.
    scheduled: bool,
}

impl Batch {
    fn ship(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let buf = std::mem::take(&mut self.buf);
        let lines = std::mem::take(&mut self.lines);
        if let Some(sink) = &self.sink {
            sink.send(buf, lines);
        }
    }
}

impl Drop for Batch {
    /// A worker thread that ends (shutdown) hands over what it still holds.
    fn drop(&mut self) {
        self.ship();
    }
}

thread_local! {
    static BATCH: RefCell<Batch> = RefCell::new(Batch::default());
}

/// Makes `sink` this thread's destination; lines already batched for
/// another one go there first. Cheap when it already is.
pub(super) fn attach(sink: &Arc<Inner>) {
    let _ = BATCH.try_with(|batch| {
        let mut batch = batch.borrow_mut();
        if batch.sink.as_ref().is_some_and(|s| Arc::ptr_eq(s, sink)) {
            return;
        }
        batch.ship();
        batch.sink = Some(sink.clone());
    });
}

/// Appends one line, written by `write` in this thread's log format, to
/// this thread's batch and makes sure the batch will be shipped soon.
pub(super) fn push(write: impl FnOnce(AccessLogFormat, &mut Vec<u8>)) {
    let _ = BATCH.try_with(|batch| {
        let mut batch = batch.borrow_mut();
        let Some(format) = batch.sink.as_ref().map(|s| s.format) else {
            return;
        };
        if batch.buf.capacity() == 0 {
            batch.buf.reserve(BATCH_START_BYTES);
        }
        write(format, &mut batch.buf);
        batch.lines += 1;
        if batch.buf.len() >= SHIP_AT_BYTES {
            batch.ship();
        } else if !batch.scheduled {
            // The spawned task runs after the tasks already waiting on this
            // worker's runtime: their lines join this batch meanwhile.
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    batch.scheduled = true;
                    drop(batch);
                    runtime.spawn(async { ship_scheduled() });
                }
                Err(_) => batch.ship(),
            }
        }
    });
}

fn ship_scheduled() {
    let _ = BATCH.try_with(|batch| {
        let mut batch = batch.borrow_mut();
        batch.scheduled = false;
        batch.ship();
    });
}

impl Inner {
    /// Queues a batch for the writer, or drops it when the queue is full.
    fn send(&self, buf: Vec<u8>, lines: u64) {
        let len = buf.len();
        if self.queued_bytes.load(Ordering::Relaxed) + len > super::MAX_QUEUED_BYTES {
            self.dropped.fetch_add(lines, Ordering::Relaxed);
            return;
        }
        self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if self.tx.try_send(super::Batch { buf, lines }).is_err() {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            self.dropped.fetch_add(lines, Ordering::Relaxed);
        }
    }
}
