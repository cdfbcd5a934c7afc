//! The bounded channel from [`Session`](crate::Session)s to the response body
//! ([`StreamingBody`](crate::StreamingBody)).
//!
//! Patched in (see the workspace's `patches/README.md`): actix-ws 0.4.0 used
//! `tokio::sync::mpsc::channel(32)`, which allocates its first block of 32 slots and a ~0.5 KB header
//! when it is created and holds them for the life of the socket, even while nothing is sent. This
//! channel is one small `Arc<Mutex<_>>` whose queue allocates when a message is sent and is released
//! when the receiver has taken everything and goes to sleep, so an idle socket holds no queue buffer.
//!
//! Semantics kept from the tokio channel as actix-ws used it (through `tokio_util`'s `PollSender`):
//! - bounded: at most `capacity` messages are queued or reserved; a sender first reserves a slot
//!   ([`Sender::poll_reserve`], pending while the channel is full), then sends into it
//!   ([`Sender::send_reserved`]); a clone of a sender starts without a reservation;
//! - once the receiver is closed or dropped, reserving and sending fail;
//! - the receiver sees the end of the channel (`None`) when every sender is dropped and the queue is
//!   empty; messages queued before [`Receiver::close`] can still be received.

use std::{
    collections::VecDeque,
    mem,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll, Waker},
};

/// Creates a bounded channel holding at most `capacity` messages.
pub(crate) fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    assert!(capacity > 0, "channel capacity must be at least 1");

    let shared = Arc::new(Mutex::new(State {
        queue: VecDeque::new(),
        capacity,
        reserved: 0,
        senders: 1,
        rx_closed: false,
        rx_waker: None,
        tx_wakers: Vec::new(),
    }));

    (
        Sender {
            shared: Arc::clone(&shared),
            reserved: false,
        },
        Receiver { shared },
    )
}

struct State<T> {
    /// Sent, not yet received. Empty (no allocation) while idle.
    queue: VecDeque<T>,
    capacity: usize,
    /// Slots reserved by senders that have not sent into them yet.
    reserved: usize,
    /// Live senders; the receiver ends when this is 0 and the queue is empty.
    senders: usize,
    rx_closed: bool,
    rx_waker: Option<Waker>,
    /// Senders waiting for a free slot; all are woken when one frees up (there are a few senders
    /// per socket at most).
    tx_wakers: Vec<Waker>,
}

impl<T> State<T> {
    fn take_tx_wakers(&mut self) -> Vec<Waker> {
        mem::take(&mut self.tx_wakers)
    }
}

fn lock<T>(shared: &Mutex<State<T>>) -> MutexGuard<'_, State<T>> {
    // Nothing panics while the lock is held; a poisoned lock still holds a consistent state.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

fn wake_all(wakers: Vec<Waker>) {
    for waker in wakers {
        waker.wake();
    }
}

/// The error of a send: the receiver is closed or gone (or no slot was reserved); the message is
/// handed back.
#[derive(Debug)]
pub(crate) struct SendError<T>(pub(crate) T);

/// Sending half; cloneable.
pub(crate) struct Sender<T> {
    shared: Arc<Mutex<State<T>>>,
    /// This sender holds one reserved slot.
    reserved: bool,
}

impl<T> Sender<T> {
    /// Reserves a slot for the next [`send_reserved`](Self::send_reserved). Pending while the
    /// channel is full; `Err(())` once the receiver is closed or gone.
    pub(crate) fn poll_reserve(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        let mut state = lock(&self.shared);

        if state.rx_closed {
            return Poll::Ready(Err(()));
        }

        if self.reserved {
            return Poll::Ready(Ok(()));
        }

        if state.queue.len() + state.reserved < state.capacity {
            state.reserved += 1;
            self.reserved = true;
            return Poll::Ready(Ok(()));
        }

        if !state.tx_wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.tx_wakers.push(cx.waker().clone());
        }

        Poll::Pending
    }

    /// Sends into the slot reserved by [`poll_reserve`](Self::poll_reserve).
    pub(crate) fn send_reserved(&mut self, value: T) -> Result<(), SendError<T>> {
        if !self.reserved {
            return Err(SendError(value));
        }

        self.reserved = false;

        let mut state = lock(&self.shared);
        state.reserved -= 1;

        if state.rx_closed {
            return Err(SendError(value));
        }

        state.queue.push_back(value);
        let rx_waker = state.rx_waker.take();
        drop(state);

        if let Some(waker) = rx_waker {
            waker.wake();
        }

        Ok(())
    }

    /// Waits for a slot and sends into it.
    #[cfg(test)]
    pub(crate) async fn send(&mut self, value: T) -> Result<(), SendError<T>> {
        if std::future::poll_fn(|cx| self.poll_reserve(cx))
            .await
            .is_err()
        {
            return Err(SendError(value));
        }

        self.send_reserved(value)
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        lock(&self.shared).senders += 1;

        Sender {
            shared: Arc::clone(&self.shared),
            reserved: false,
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = lock(&self.shared);

        let tx_wakers = if self.reserved {
            state.reserved -= 1;
            state.take_tx_wakers()
        } else {
            Vec::new()
        };

        state.senders -= 1;
        let rx_waker = if state.senders == 0 {
            state.rx_waker.take()
        } else {
            None
        };
        drop(state);

        wake_all(tx_wakers);
        if let Some(waker) = rx_waker {
            waker.wake();
        }
    }
}

/// Receiving half.
pub(crate) struct Receiver<T> {
    shared: Arc<Mutex<State<T>>>,
}

impl<T> Receiver<T> {
    /// Receives the next message; `Ready(None)` once every sender is gone (or the receiver is
    /// closed) and the queue is empty.
    #[cfg(test)]
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = lock(&self.shared);

        if let Some(value) = state.queue.pop_front() {
            let tx_wakers = state.take_tx_wakers();
            drop(state);
            wake_all(tx_wakers);
            return Poll::Ready(Some(value));
        }

        Self::end_or_sleep(&mut state, cx).map(|()| None)
    }

    /// Waits for the next message.
    #[cfg(test)]
    pub(crate) async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Moves every queued message to the end of `out`, then returns `Ready(())` if the channel has
    /// ended (every sender gone or the receiver closed: nothing more will come), else registers
    /// for the next message and returns `Pending`.
    ///
    /// When `out` is empty the queue's buffer itself moves to `out` and the channel keeps `out`'s
    /// old (empty) buffer: a caller that releases `out`'s buffer once it has handled the messages
    /// leaves nothing allocated while idle.
    pub(crate) fn poll_recv_all(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut VecDeque<T>,
    ) -> Poll<()> {
        let mut state = lock(&self.shared);

        let tx_wakers = if state.queue.is_empty() {
            Vec::new()
        } else {
            if out.is_empty() {
                mem::swap(&mut state.queue, out);
            } else {
                out.append(&mut state.queue);
            }
            state.take_tx_wakers()
        };

        let poll = Self::end_or_sleep(&mut state, cx);
        drop(state);

        wake_all(tx_wakers);
        poll
    }

    /// With an empty queue: `Ready` if the channel has ended, else register the receiver's waker
    /// and release the queue's buffer.
    fn end_or_sleep(state: &mut State<T>, cx: &mut Context<'_>) -> Poll<()> {
        if state.senders == 0 || state.rx_closed {
            return Poll::Ready(());
        }

        if !state
            .rx_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.rx_waker = Some(cx.waker().clone());
        }

        if state.queue.capacity() != 0 {
            state.queue = VecDeque::new();
        }

        Poll::Pending
    }

    /// Closes the channel: reserving and sending fail from now on; messages already queued can
    /// still be received.
    pub(crate) fn close(&mut self) {
        let mut state = lock(&self.shared);
        state.rx_closed = true;
        let tx_wakers = state.take_tx_wakers();
        drop(state);

        wake_all(tx_wakers);
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = lock(&self.shared);
        state.rx_closed = true;
        let queue = mem::take(&mut state.queue);
        let tx_wakers = state.take_tx_wakers();
        drop(state);

        // Messages (and the wakers' tasks) are dropped outside the lock.
        drop(queue);
        wake_all(tx_wakers);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        sync::{
            atomic::{AtomicUsize, Ordering},
            Arc,
        },
        task::{Context, Poll, Wake, Waker},
    };

    use super::channel;

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn bounded_senders_wait_for_a_slot_and_are_woken() {
        let counter = Arc::new(CountingWaker::default());
        let waker = Waker::from(Arc::clone(&counter));
        let mut cx = Context::from_waker(&waker);

        let (mut tx, mut rx) = channel::<u32>(2);
        let mut tx2 = tx.clone();

        assert!(tx.poll_reserve(&mut cx).is_ready());
        tx.send_reserved(1).unwrap();
        // A reservation counts against the capacity before anything is sent into it.
        assert!(tx2.poll_reserve(&mut cx).is_ready());
        assert!(tx.poll_reserve(&mut cx).is_pending());
        tx2.send_reserved(2).unwrap();
        assert!(tx.poll_reserve(&mut cx).is_pending());
        // Sending without a reservation fails and hands the value back.
        assert_eq!(tx.send_reserved(3).unwrap_err().0, 3);

        let woken = counter.0.load(Ordering::SeqCst);
        let mut out = VecDeque::new();
        assert!(rx.poll_recv_all(&mut cx, &mut out).is_pending());
        assert_eq!(out, [1, 2]);
        assert!(
            counter.0.load(Ordering::SeqCst) > woken,
            "waiting sender woken"
        );
        // The queue's buffer moved to `out`; the channel holds none while waiting.
        assert_eq!(super::lock(&rx.shared).queue.capacity(), 0);

        assert!(tx.poll_reserve(&mut cx).is_ready());
        tx.send_reserved(3).unwrap();
        out.clear();
        assert!(rx.poll_recv_all(&mut cx, &mut out).is_pending());
        assert_eq!(out, [3]);
        assert_eq!(super::lock(&rx.shared).queue.capacity(), 0);
    }

    #[test]
    fn receiver_ends_when_every_sender_is_gone() {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);

        let (mut tx, mut rx) = channel::<u32>(4);
        let tx2 = tx.clone();

        assert!(tx.poll_reserve(&mut cx).is_ready());
        tx.send_reserved(1).unwrap();
        drop(tx);
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(1)));
        assert_eq!(rx.poll_recv(&mut cx), Poll::Pending);
        drop(tx2);
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn senders_fail_once_the_receiver_is_closed_or_gone() {
        let counter = Arc::new(CountingWaker::default());
        let waker = Waker::from(Arc::clone(&counter));
        let mut cx = Context::from_waker(&waker);

        let (mut tx, mut rx) = channel::<u32>(1);
        let mut tx2 = tx.clone();
        assert!(tx.poll_reserve(&mut cx).is_ready());
        tx.send_reserved(1).unwrap();
        assert!(tx2.poll_reserve(&mut cx).is_pending());

        rx.close();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "waiting sender woken");
        assert_eq!(tx2.poll_reserve(&mut cx), Poll::Ready(Err(())));
        // What was sent before the close can still be received; then the channel has ended.
        let mut out = VecDeque::new();
        assert!(rx.poll_recv_all(&mut cx, &mut out).is_ready());
        assert_eq!(out, [1]);

        let (mut tx, rx) = channel::<u32>(1);
        drop(rx);
        assert_eq!(tx.poll_reserve(&mut cx), Poll::Ready(Err(())));
    }
}
