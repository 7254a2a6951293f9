//! The answer to a caller waiting for a commit, which it waits for either
//! on its thread (a blocking call) or as a future (the tower middleware, on
//! an async runtime whose worker must not block): one value, sent once by
//! the ledger's writer, taken once by the waiter.

use std::sync::Arc;
use std::task::Waker;
#[cfg(feature = "tower")]
use std::task::{Context, Poll};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use crate::ledger::LedgerError;

/// What a commit answers a waiter: whether a grant it asked for came back
/// short (the ledger had not even its minimum left), or the ledger's error.
pub(crate) type Answer = Result<bool, LedgerError>;

struct Slot {
    answer: Option<Answer>,
    /// The sender is gone without answering (the writer stopped).
    dropped: bool,
    /// The task to wake when the answer comes or the deadline passes (an
    /// async waiter).
    waker: Option<Waker>,
    /// The deadline thread knows this reply (an async waiter's deadline is
    /// registered once, not at every poll).
    #[cfg(feature = "tower")]
    timed: bool,
}

struct Shared {
    slot: Mutex<Slot>,
    ready: Condvar,
}

/// The writer's end: answers once; dropped unanswered, it tells the waiter
/// that no answer will come.
pub(crate) struct ReplyTx(Option<Arc<Shared>>);

/// The waiter's end.
pub(crate) struct ReplyRx(Arc<Shared>);

/// A reply channel: one answer from `ReplyTx` to `ReplyRx`.
pub(crate) fn reply() -> (ReplyTx, ReplyRx) {
    let shared = Arc::new(Shared {
        slot: Mutex::new(Slot {
            answer: None,
            dropped: false,
            waker: None,
            #[cfg(feature = "tower")]
            timed: false,
        }),
        ready: Condvar::new(),
    });
    (ReplyTx(Some(Arc::clone(&shared))), ReplyRx(shared))
}

impl ReplyTx {
    /// Answers the waiter (who may have gone: then nobody reads it).
    pub(crate) fn send(mut self, answer: Answer) {
        if let Some(shared) = self.0.take() {
            finish(&shared, Some(answer));
        }
    }
}

impl Drop for ReplyTx {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            finish(&shared, None); // dropped unanswered
        }
    }
}

/// Puts the answer (`None`: none will come) where the waiter finds it,
/// and wakes the waiter.
fn finish(shared: &Shared, answer: Option<Answer>) {
    let waker = {
        let mut slot = shared.slot.lock();
        match answer {
            Some(a) => slot.answer = Some(a),
            None => slot.dropped = true,
        }
        slot.waker.take()
    };
    shared.ready.notify_all();
    if let Some(w) = waker {
        w.wake();
    }
}

impl ReplyRx {
    /// Waits on this thread until the answer comes or `deadline` passes:
    /// `None` if it passed first or the writer went without answering.
    pub(crate) fn recv_until(&self, deadline: Instant) -> Option<Answer> {
        self.wait(Some(deadline))
    }

    /// Waits until the answer comes: `None` if the writer went without
    /// answering.
    pub(crate) fn recv(&self) -> Option<Answer> {
        self.wait(None)
    }

    fn wait(&self, deadline: Option<Instant>) -> Option<Answer> {
        let mut slot = self.0.slot.lock();
        loop {
            if let Some(a) = slot.answer.take() {
                return Some(a);
            }
            if slot.dropped {
                return None;
            }
            match deadline {
                Some(d) => {
                    if self.0.ready.wait_until(&mut slot, d).timed_out() {
                        return slot.answer.take();
                    }
                }
                None => self.0.ready.wait(&mut slot),
            }
        }
    }

    /// The answer if it has come (`Ready(None)`: it never will, or
    /// `deadline` has passed); else `cx`'s task is woken when it comes or
    /// when `deadline` passes (by the deadline thread, told once per
    /// reply).
    #[cfg(feature = "tower")]
    pub(crate) fn poll_until(
        &self,
        cx: &mut Context<'_>,
        deadline: Instant,
    ) -> Poll<Option<Answer>> {
        let mut slot = self.0.slot.lock();
        if let Some(a) = slot.answer.take() {
            return Poll::Ready(Some(a));
        }
        if slot.dropped || Instant::now() >= deadline {
            return Poll::Ready(None);
        }
        match &mut slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        if !slot.timed {
            slot.timed = true;
            drop(slot);
            wake_at(deadline, Arc::downgrade(&self.0));
        }
        Poll::Pending
    }
}

/// Wakes the waiter of `reply` at `deadline` (or soon after), if it is
/// still waiting: what bounds an async waiter's wait when the ledger does
/// not answer. One thread per process, started by the first such wait,
/// sleeps until the earliest deadline registered. It holds each reply
/// weakly: a waiter that finished (its reply dropped) keeps nothing alive,
/// its task's waker included.
#[cfg(feature = "tower")]
fn wake_at(deadline: Instant, reply: std::sync::Weak<Shared>) {
    static TIMER: std::sync::OnceLock<Option<&'static Timer>> = std::sync::OnceLock::new();
    let timer = TIMER.get_or_init(|| {
        let timer: &'static Timer = Box::leak(Box::new(Timer {
            queue: Mutex::new(std::collections::BinaryHeap::new()),
            changed: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("benefit-quota-deadlines".into())
            .spawn(move || timer.run())
            .ok()
            .map(|_| timer)
    });
    match timer {
        Some(t) => t.add(deadline, reply),
        // No thread to wait with (the system refused one): woken at once,
        // so polled again until the deadline passes or the answer comes
        // (each poll registers again).
        None => {
            if let Some(shared) = reply.upgrade() {
                let mut slot = shared.slot.lock();
                slot.timed = false;
                let waker = slot.waker.take();
                drop(slot);
                waker.into_iter().for_each(Waker::wake);
            }
        }
    }
}

#[cfg(feature = "tower")]
struct Timer {
    queue: Mutex<std::collections::BinaryHeap<Due>>,
    changed: Condvar,
}

/// A reply due at `at` (ordered so that the heap's top is the earliest).
#[cfg(feature = "tower")]
struct Due {
    at: Instant,
    reply: std::sync::Weak<Shared>,
}

#[cfg(feature = "tower")]
impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

#[cfg(feature = "tower")]
impl Eq for Due {}

#[cfg(feature = "tower")]
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(feature = "tower")]
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.at.cmp(&self.at)
    }
}

#[cfg(feature = "tower")]
impl Timer {
    fn add(&self, at: Instant, reply: std::sync::Weak<Shared>) {
        let mut queue = self.queue.lock();
        let earliest = queue.peek().is_none_or(|d| at < d.at);
        queue.push(Due { at, reply });
        if earliest {
            self.changed.notify_one();
        }
    }

    fn run(&self) {
        let mut queue = self.queue.lock();
        loop {
            let now = Instant::now();
            let mut due = Vec::new();
            while queue.peek().is_some_and(|d| d.at <= now) {
                due.extend(queue.pop().map(|d| d.reply));
            }
            if !due.is_empty() {
                // Woken with the queue unlocked: a woken task may poll at
                // once.
                parking_lot::MutexGuard::unlocked(&mut queue, || {
                    for reply in due.iter().filter_map(std::sync::Weak::upgrade) {
                        let waker = reply.slot.lock().waker.take();
                        waker.into_iter().for_each(Waker::wake);
                    }
                });
                continue;
            }
            match queue.peek().map(|d| d.at) {
                Some(at) => {
                    self.changed.wait_until(&mut queue, at);
                }
                None => self.changed.wait(&mut queue),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_answer_sent_before_or_while_waiting_is_received_once() {
        let (tx, rx) = reply();
        tx.send(Ok(true));
        assert!(matches!(rx.recv(), Some(Ok(true))));
        let (tx, rx) = reply();
        let t = std::thread::spawn(move || tx.send(Ok(false)));
        let far = Instant::now() + Duration::from_secs(60);
        assert!(matches!(rx.recv_until(far), Some(Ok(false))));
        t.join().unwrap();
    }

    #[test]
    fn a_sender_dropped_unanswered_ends_the_wait() {
        let (tx, rx) = reply();
        let t = std::thread::spawn(move || drop(tx));
        assert!(rx.recv().is_none());
        t.join().unwrap();
        let (tx, rx) = reply();
        drop(tx);
        assert!(rx
            .recv_until(Instant::now() + Duration::from_secs(60))
            .is_none());
    }

    #[test]
    fn a_deadline_passed_ends_the_wait_without_an_answer() {
        let (_tx, rx) = reply();
        assert!(rx.recv_until(Instant::now()).is_none());
    }

    #[cfg(feature = "tower")]
    /// Counts its wakes.
    struct Count(std::sync::atomic::AtomicUsize);

    #[cfg(feature = "tower")]
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[cfg(feature = "tower")]
    impl Count {
        fn waker() -> (Arc<Count>, Waker) {
            let count = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
            (Arc::clone(&count), Waker::from(count))
        }

        fn get(&self) -> usize {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[cfg(feature = "tower")]
    #[test]
    fn a_waiting_task_is_woken_once_its_deadline_passes_then_sees_none() {
        let (count, waker) = Count::waker();
        let mut cx = Context::from_waker(&waker);
        let (_tx, rx) = reply();
        let deadline = Instant::now() + Duration::from_millis(20);
        assert!(rx.poll_until(&mut cx, deadline).is_pending());
        // Polled again before the deadline: still waiting.
        assert!(rx.poll_until(&mut cx, deadline).is_pending());
        let until = Instant::now() + Duration::from_secs(60);
        while count.get() == 0 {
            assert!(Instant::now() < until, "not woken at the deadline");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(Instant::now() >= deadline, "woken before the deadline");
        assert!(matches!(
            rx.poll_until(&mut cx, deadline),
            Poll::Ready(None)
        ));
        assert_eq!(count.get(), 1);
    }

    #[cfg(feature = "tower")]
    #[test]
    fn a_polling_task_is_woken_by_the_answer_and_by_a_drop() {
        let (count, waker) = Count::waker();
        let mut cx = Context::from_waker(&waker);
        let far = Instant::now() + Duration::from_secs(3_600);
        let (tx, rx) = reply();
        assert!(rx.poll_until(&mut cx, far).is_pending());
        assert!(rx.poll_until(&mut cx, far).is_pending());
        tx.send(Ok(false));
        assert_eq!(count.get(), 1);
        assert!(matches!(
            rx.poll_until(&mut cx, far),
            Poll::Ready(Some(Ok(false)))
        ));
        let (tx, rx) = reply();
        assert!(rx.poll_until(&mut cx, far).is_pending());
        drop(tx);
        assert_eq!(count.get(), 2);
        assert!(matches!(rx.poll_until(&mut cx, far), Poll::Ready(None)));
    }
}
