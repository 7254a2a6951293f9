//! The answer to a caller waiting for a commit, which it waits for either
//! on its thread (a blocking call) or as a future (the tower middleware, on
//! an async runtime whose worker must not block): one value, sent once by
//! the ledger's writer, taken once by the waiter.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
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
    /// The task to wake when the answer comes (an async waiter).
    waker: Option<Waker>,
}

struct Shared {
    slot: Mutex<Slot>,
    ready: Condvar,
}

/// The writer's end: answers once; dropped unanswered, it tells the waiter
/// that no answer will come.
pub(crate) struct ReplyTx(Arc<Shared>);

/// The waiter's end.
pub(crate) struct ReplyRx(Arc<Shared>);

/// A reply channel: one answer from `ReplyTx` to `ReplyRx`.
pub(crate) fn reply() -> (ReplyTx, ReplyRx) {
    let shared = Arc::new(Shared {
        slot: Mutex::new(Slot {
            answer: None,
            dropped: false,
            waker: None,
        }),
        ready: Condvar::new(),
    });
    (ReplyTx(Arc::clone(&shared)), ReplyRx(shared))
}

impl ReplyTx {
    /// Answers the waiter (who may have gone: then nobody reads it).
    pub(crate) fn send(self, answer: Answer) {
        self.finish(Some(answer));
    }

    fn finish(&self, answer: Option<Answer>) {
        let waker = {
            let mut slot = self.0.slot.lock();
            if slot.answer.is_some() || slot.dropped {
                return; // answered already (`send`, then drop)
            }
            match answer {
                Some(a) => slot.answer = Some(a),
                None => slot.dropped = true,
            }
            slot.waker.take()
        };
        self.0.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Drop for ReplyTx {
    fn drop(&mut self) {
        self.finish(None);
    }
}

impl ReplyRx {
    /// Waits on this thread until the answer comes or `deadline` passes:
    /// `None` if it passed first or the writer went without answering.
    pub(crate) fn recv_until(&self, deadline: Instant) -> Option<Answer> {
        let mut slot = self.0.slot.lock();
        loop {
            if let Some(a) = slot.answer.take() {
                return Some(a);
            }
            if slot.dropped || self.0.ready.wait_until(&mut slot, deadline).timed_out() {
                return slot.answer.take();
            }
        }
    }

    /// Waits until the answer comes: `None` if the writer went without
    /// answering.
    pub(crate) fn recv(&self) -> Option<Answer> {
        let mut slot = self.0.slot.lock();
        loop {
            if let Some(a) = slot.answer.take() {
                return Some(a);
            }
            if slot.dropped {
                return None;
            }
            self.0.ready.wait(&mut slot);
        }
    }

    /// The answer if it has come (`Ready(None)`: it never will); else
    /// `cx`'s task is woken when it does.
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Answer>> {
        let mut slot = self.0.slot.lock();
        if let Some(a) = slot.answer.take() {
            return Poll::Ready(Some(a));
        }
        if slot.dropped {
            return Poll::Ready(None);
        }
        match &mut slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// Wakes `waker` at `deadline` (or soon after): what bounds an async
/// waiter's wait when the ledger does not answer. One thread per process,
/// started by the first such wait, sleeps until the earliest deadline
/// registered; a waiter registered again on each poll may be woken more
/// than once (a wake-up is a hint to poll again).
pub(crate) fn wake_at(deadline: Instant, waker: &Waker) {
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
        Some(t) => t.add(deadline, waker),
        // No thread to wait with (the system refused one): polled again at
        // once, until the deadline passes or the answer comes.
        None => waker.wake_by_ref(),
    }
}

struct Timer {
    queue: Mutex<std::collections::BinaryHeap<Due>>,
    changed: Condvar,
}

/// A waker due at `at` (ordered so that the heap's top is the earliest).
struct Due {
    at: Instant,
    waker: Waker,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.at.cmp(&self.at)
    }
}

impl Timer {
    fn add(&self, at: Instant, waker: &Waker) {
        let mut queue = self.queue.lock();
        let earliest = queue.peek().is_none_or(|d| at < d.at);
        queue.push(Due {
            at,
            waker: waker.clone(),
        });
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
                due.extend(queue.pop().map(|d| d.waker));
            }
            if !due.is_empty() {
                // Woken with the queue unlocked: a woken task may poll, and
                // register again, at once.
                parking_lot::MutexGuard::unlocked(&mut queue, || {
                    due.into_iter().for_each(Waker::wake);
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

    #[test]
    fn a_waker_registered_for_a_deadline_is_woken_once_it_passes() {
        let (tx, rx) = std::sync::mpsc::channel();
        struct Send(Mutex<std::sync::mpsc::Sender<Instant>>);
        impl std::task::Wake for Send {
            fn wake(self: Arc<Self>) {
                let _ = self.0.lock().send(Instant::now());
            }
        }
        let waker = Waker::from(Arc::new(Send(Mutex::new(tx))));
        let start = Instant::now();
        let late = start + Duration::from_millis(40);
        let early = start + Duration::from_millis(20);
        wake_at(late, &waker);
        wake_at(early, &waker);
        let first = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        let second = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        assert!(first >= early && second >= late, "woken before a deadline");
    }

    #[test]
    fn a_polling_task_is_woken_by_the_answer_and_by_a_drop() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let (tx, rx) = reply();
        assert!(rx.poll_recv(&mut cx).is_pending());
        assert!(rx.poll_recv(&mut cx).is_pending());
        tx.send(Ok(false));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(matches!(
            rx.poll_recv(&mut cx),
            Poll::Ready(Some(Ok(false)))
        ));
        let (tx, rx) = reply();
        assert!(rx.poll_recv(&mut cx).is_pending());
        drop(tx);
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert!(matches!(rx.poll_recv(&mut cx), Poll::Ready(None)));
    }
}
