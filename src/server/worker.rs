//! Worker threads: each runs its own single-threaded runtime, so a request
//! stays on one core from accept to response, and per-worker state (balancer
//! scores, idle upstream connections) is never shared across cores.

use std::cell::Cell;
use std::ops::Deref;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The index of the worker running on this thread (0 elsewhere).
pub fn current() -> usize {
    WORKER.with(Cell::get)
}

/// Marks this thread as worker `index`.
pub(crate) fn enter(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// A value owned by one worker, on its own cache line so that workers never
/// write to each other's lines.
#[derive(Debug)]
#[repr(align(128))]
pub struct PerWorker<T>(T);

impl<T> PerWorker<T> {
    pub fn new(value: T) -> Self {
        PerWorker(value)
    }
}

impl<T> Deref for PerWorker<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}
