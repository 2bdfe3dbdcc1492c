//! Long-lived streams (watches, logs, exec, port-forward) and their closing on revocation.
//!
//! Each open stream registers its [`Owner`] on its core: the caller's token digest and, for a
//! cluster's stream, the cluster credentials it was opened with. A per-core sweep ([`sweep`],
//! every second) checks every stream against the current tables; a stream whose token was
//! revoked or has expired, or whose cluster was deleted or got new credentials (a rotated
//! token, another CA, other addresses), is woken through its [`Revoked`] future and closes.
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use std::sync::Arc;

use crate::tables::{self, Upstream};

/// Whose a stream is: what must stay valid for it to stay open.
pub struct Owner {
    pub digest: [u8; 32],
    /// The cluster credentials the stream was opened with (None: a mesos-driver's or a console's).
    pub cluster: Option<Arc<Upstream>>,
}

#[derive(Default)]
struct Signal {
    fired: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// Resolves when the stream's token stops being valid.
pub struct Revoked(Rc<Signal>);

impl Future for Revoked {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.fired.get() {
            return Poll::Ready(());
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

struct Entry {
    owner: Owner,
    signal: Rc<Signal>,
}

thread_local! {
    static OPEN: RefCell<HashMap<u64, Entry>> = RefCell::new(HashMap::new());
    static NEXT: Cell<u64> = const { Cell::new(0) };
}

/// A registered stream; dropping it unregisters.
pub struct Registration(u64);

impl Drop for Registration {
    fn drop(&mut self) {
        OPEN.with(|open| open.borrow_mut().remove(&self.0));
        crate::metrics::stream_closed();
    }
}

pub fn register(owner: Owner) -> (Registration, Revoked) {
    let id = NEXT.with(|n| {
        n.set(n.get() + 1);
        n.get()
    });
    let signal = Rc::new(Signal::default());
    OPEN.with(|open| open.borrow_mut().insert(id, Entry { owner, signal: signal.clone() }));
    crate::metrics::stream_opened();
    (Registration(id), Revoked(signal))
}

/// Fires every stream whose token is no longer valid in the current tables, or whose cluster
/// no longer has the credentials the stream was opened with.
pub fn sweep() {
    let Some(tables) = tables::current() else { return };
    let now = tables::now();
    OPEN.with(|open| {
        for entry in open.borrow().values() {
            let valid = tables.token_valid(&entry.owner.digest, now)
                && entry.owner.cluster.as_ref().is_none_or(|upstream| tables.serves(upstream));
            if !entry.signal.fired.get() && !valid {
                entry.signal.fired.set(true);
                if let Some(waker) = entry.signal.waker.borrow_mut().take() {
                    waker.wake();
                }
            }
        }
    });
}
