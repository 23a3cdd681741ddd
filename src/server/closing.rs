//! A listener's closing signal: raised once (at shutdown, or when a reload
//! removes the listener) and never lowered; its accept loops stop and its
//! connections finish gracefully. Every request asks whether it is raised
//! (one atomic load), and every idle connection waits for it: the wait is
//! one `Notified` in the waiting future, no allocation, no lock to check.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

#[derive(Debug, Default)]
pub(crate) struct Closing {
    raised: AtomicBool,
    notify: Notify,
}

impl Closing {
    /// Raises the signal, waking every wait; again is harmless.
    pub(crate) fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub(crate) fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Resolves once the signal is raised, at once if it already is. The
    /// wait counts from when it is made, not from its first poll: a raise
    /// in between is not missed.
    pub(crate) fn raised(&self) -> Raised<'_> {
        Raised {
            notified: self.notify.notified(),
            closing: self,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Closing::raised`].
    pub(crate) struct Raised<'a> {
        #[pin]
        notified: Notified<'a>,
        closing: &'a Closing,
    }
}

impl Future for Raised<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        // `notify_waiters` wakes the waits made before it, polled or not;
        // a wait made after the raise sees the flag.
        if this.closing.is_raised() {
            return Poll::Ready(());
        }
        this.notified.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_wait_made_before_the_raise_ends_even_if_first_polled_after() {
        let closing = Closing::default();
        let wait = closing.raised();
        closing.raise();
        wait.await;
        assert!(closing.is_raised());
        closing.raised().await;
    }

    #[tokio::test]
    async fn a_pending_wait_is_woken_by_the_raise() {
        let closing = Arc::new(Closing::default());
        let waiter = tokio::spawn({
            let closing = closing.clone();
            async move { closing.raised().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        closing.raise();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
