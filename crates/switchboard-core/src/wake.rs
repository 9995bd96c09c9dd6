//! Answers handed from one thread to tasks of another, with one wake per
//! thread for all of them.
//!
//! Waking a task of another thread's runtime costs a system call (the
//! runtime's reactor is woken through its eventfd) for every task woken,
//! even when many tasks of that runtime are woken at once, as when one
//! group commit answers the publishes of many connections. A thread that
//! runs a [`relay`] instead receives the wakes of its tasks as one list:
//! the answering thread wakes the relay once, and the relay wakes each
//! task from its own thread, where a wake is a push onto the runtime's
//! queue.
//!
//! [`answer`] makes a one-shot channel whose sender defers its wake into
//! [`Wakes`], which groups the wakes by relay and hands each group over
//! when flushed. A receiver polled on a thread without a relay is woken
//! directly, as any other waker.
//!
//! This module does no IO and depends on no runtime: the relay is a future
//! the thread's runtime polls.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// One thread's relay: the wakes handed to it, and the waker of the
/// relay's own future while it waits.
#[derive(Default)]
struct Relay {
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    wakers: Vec<Waker>,
    /// The relay's future, when it waits for wakes.
    relay: Option<Waker>,
    /// Cleared when the relay's future is dropped: wakes go direct again.
    alive: bool,
}

impl Relay {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands `wakers` over, waking the relay once; wakes them directly if
    /// the relay is gone.
    fn hand(&self, wakers: Vec<Waker>) {
        let mut queue = self.queue();
        if !queue.alive {
            drop(queue);
            wakers.into_iter().for_each(Waker::wake);
            return;
        }
        queue.wakers.extend(wakers);
        let relay = queue.relay.take();
        drop(queue);
        if let Some(relay) = relay {
            relay.wake();
        }
    }
}

thread_local! {
    static RELAY: RefCell<Option<Arc<Relay>>> = const { RefCell::new(None) };
}

/// This thread's relay, if it runs one.
fn this_threads() -> Option<Arc<Relay>> {
    RELAY.with(|r| r.borrow().clone())
}

/// Makes this thread's relay and returns its future, to be spawned on
/// the runtime this thread runs (a current-thread runtime: the future must
/// be polled on this thread). It never ends; dropped, it wakes what it
/// still holds, and later wakes go direct.
pub fn relay() -> impl Future<Output = ()> + Send + 'static {
    let relay = Arc::new(Relay {
        queue: Mutex::new(Queue {
            alive: true,
            ..Queue::default()
        }),
    });
    RELAY.with(|r| *r.borrow_mut() = Some(relay.clone()));
    RelayFuture(relay)
}

struct RelayFuture(Arc<Relay>);

impl Future for RelayFuture {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let wakers = {
                let mut queue = self.0.queue();
                if queue.wakers.is_empty() {
                    match &queue.relay {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => queue.relay = Some(cx.waker().clone()),
                    }
                    return Poll::Pending;
                }
                std::mem::take(&mut queue.wakers)
            };
            wakers.into_iter().for_each(Waker::wake);
        }
    }
}

impl Drop for RelayFuture {
    fn drop(&mut self) {
        let wakers = {
            let mut queue = self.0.queue();
            queue.alive = false;
            queue.relay = None;
            std::mem::take(&mut queue.wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// Wakes to hand over together: grouped by the relay of each woken task's
/// thread. Dropped, it flushes.
#[derive(Default)]
pub struct Wakes {
    direct: Vec<Waker>,
    relayed: Vec<(Arc<Relay>, Vec<Waker>)>,
}

impl Wakes {
    fn push(&mut self, waker: Waker, relay: Option<Arc<Relay>>) {
        match relay {
            None => self.direct.push(waker),
            Some(relay) => match self
                .relayed
                .iter_mut()
                .find(|(r, _)| Arc::ptr_eq(r, &relay))
            {
                Some((_, wakers)) => wakers.push(waker),
                None => self.relayed.push((relay, vec![waker])),
            },
        }
    }

    /// Wakes everything gathered: each relay once, the rest one by one.
    pub fn flush(&mut self) {
        for (relay, wakers) in self.relayed.drain(..) {
            relay.hand(wakers);
        }
        self.direct.drain(..).for_each(Waker::wake);
    }
}

impl Drop for Wakes {
    fn drop(&mut self) {
        self.flush();
    }
}

enum Slot<T> {
    /// No answer yet; the receiver's waker and its thread's relay, once
    /// it has been polled.
    Waiting(Option<(Waker, Option<Arc<Relay>>)>),
    Sent(T),
    /// Taken by the receiver, or the sender dropped without answering.
    Done,
}

type Shared<T> = Arc<Mutex<Slot<T>>>;

fn lock<T>(shared: &Shared<T>) -> MutexGuard<'_, Slot<T>> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A one-shot channel whose sender's wake is deferred into a [`Wakes`].
pub fn answer<T>() -> (Answer<T>, Answered<T>) {
    let shared = Arc::new(Mutex::new(Slot::Waiting(None)));
    (Answer(Some(shared.clone())), Answered(shared))
}

/// The sending half of [`answer`].
pub struct Answer<T>(Option<Shared<T>>);

impl<T> Answer<T> {
    /// Answers; the receiver is woken when `wakes` is flushed.
    pub fn send(mut self, value: T, wakes: &mut Wakes) {
        if let Some(shared) = self.0.take()
            && let Slot::Waiting(Some((waker, relay))) =
                std::mem::replace(&mut *lock(&shared), Slot::Sent(value))
        {
            wakes.push(waker, relay);
        }
    }
}

impl<T> Drop for Answer<T> {
    /// Dropped unanswered: the receiver gets [`Unanswered`] at once.
    fn drop(&mut self) {
        if let Some(shared) = self.0.take()
            && let Slot::Waiting(Some((waker, _))) =
                std::mem::replace(&mut *lock(&shared), Slot::Done)
        {
            waker.wake();
        }
    }
}

/// The sender of an [`answer`] was dropped without answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unanswered;

/// The receiving half of [`answer`]: resolves to the answer.
pub struct Answered<T>(Shared<T>);

impl<T> Future for Answered<T> {
    type Output = Result<T, Unanswered>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = lock(&self.0);
        match &mut *slot {
            Slot::Waiting(waiting) => {
                match waiting {
                    Some((w, _)) if w.will_wake(cx.waker()) => {}
                    _ => *waiting = Some((cx.waker().clone(), this_threads())),
                }
                Poll::Pending
            }
            Slot::Sent(_) => match std::mem::replace(&mut *slot, Slot::Done) {
                Slot::Sent(value) => Poll::Ready(Ok(value)),
                _ => Poll::Ready(Err(Unanswered)),
            },
            Slot::Done => Poll::Ready(Err(Unanswered)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    /// A waker that counts its wakes.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counter() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    fn poll<F: Future + Unpin>(f: &mut F, waker: &Waker) -> Poll<F::Output> {
        Pin::new(f).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn an_answer_is_received_once_its_wake_is_flushed() {
        let (tx, mut rx) = answer();
        let (count, waker) = counter();
        assert!(poll(&mut rx, &waker).is_pending());
        let mut wakes = Wakes::default();
        tx.send(7, &mut wakes);
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "woken before the flush");
        wakes.flush();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(&mut rx, &waker), Poll::Ready(Ok(7)));
    }

    #[test]
    fn an_answer_sent_before_the_first_poll_is_ready() {
        let (tx, mut rx) = answer();
        tx.send("x", &mut Wakes::default());
        let (_, waker) = counter();
        assert_eq!(poll(&mut rx, &waker), Poll::Ready(Ok("x")));
    }

    #[test]
    fn a_sender_dropped_unanswered_wakes_its_receiver_with_an_error() {
        let (tx, mut rx) = answer::<u8>();
        let (count, waker) = counter();
        assert!(poll(&mut rx, &waker).is_pending());
        drop(tx);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(&mut rx, &waker), Poll::Ready(Err(Unanswered)));
    }

    #[test]
    fn a_relay_is_woken_once_for_many_answers_and_wakes_each_receiver() {
        // Receivers polled on this thread, which runs a relay.
        let mut relay = Box::pin(relay());
        let (relay_count, relay_waker) = counter();
        assert!(
            relay
                .as_mut()
                .poll(&mut Context::from_waker(&relay_waker))
                .is_pending()
        );
        let mut receivers = Vec::new();
        let mut senders = Vec::new();
        for _ in 0..3 {
            let (tx, mut rx) = answer();
            let (count, waker) = counter();
            assert!(poll(&mut rx, &waker).is_pending());
            receivers.push((rx, count, waker));
            senders.push(tx);
        }
        // Answered from another thread, as the group commit answers.
        std::thread::spawn(move || {
            let mut wakes = Wakes::default();
            for (i, tx) in senders.into_iter().enumerate() {
                tx.send(i, &mut wakes);
            }
        })
        .join()
        .expect("the answering thread");
        assert_eq!(
            relay_count.0.load(Ordering::SeqCst),
            1,
            "one wake for three"
        );
        for (_, count, _) in &receivers {
            assert_eq!(
                count.0.load(Ordering::SeqCst),
                0,
                "woken before the relay ran"
            );
        }
        assert!(
            relay
                .as_mut()
                .poll(&mut Context::from_waker(&relay_waker))
                .is_pending()
        );
        for (i, (mut rx, count, waker)) in receivers.into_iter().enumerate() {
            assert_eq!(count.0.load(Ordering::SeqCst), 1);
            assert_eq!(poll(&mut rx, &waker), Poll::Ready(Ok(i)));
        }
        // Gone, the relay no longer holds wakes: they go direct.
        drop(relay);
        let (tx, mut rx) = answer();
        let (count, waker) = counter();
        assert!(poll(&mut rx, &waker).is_pending());
        tx.send(9, &mut Wakes::default());
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(&mut rx, &waker), Poll::Ready(Ok(9)));
        RELAY.with(|r| r.borrow_mut().take());
    }
}
