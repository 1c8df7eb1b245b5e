//! `KeyedLock` for JavaScript: a correct per-key mutex map.
//!
//! The lock itself (FIFO queues, hand-off, cancellation) is the core's
//! [`CoreLock`]; the Promise plumbing is JavaScript (`wasm/js/methods.js`), and
//! the two talk in numbers only:
//!
//! - `__lockNumber(key)` / `__lockString(key)` take the key's place in its queue
//!   now and answer a ticket: positive when the key was free (the caller holds it
//!   and runs its function), negative when it queued behind a holder.
//! - `__plRelease(ticket)` gives a held key up; a waiter it is handed to is
//!   collected at once and its ticket returned (0: none), so JavaScript runs that
//!   waiter next. `__plGranted()` returns any further granted ticket (0: none).
//! - `__plAbandon(ticket)`: a queued wait timed out; it leaves the queue.
//!
//! No export returns an object or a Promise (see the README, "The V8 crash"):
//! an export returning a single `externref` is what V8 11.x (Node 20) crashes on
//! when a lazy deoptimization lands inside an inlined call to it.
//!
//! Tickets index one table of held guards and queued acquisitions per thread
//! ([`SLOTS`]), shared by every `KeyedLock`: a release needs no lock object, and
//! the JavaScript side keeps its waiters in one array by ticket.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use pointlock_core::{Acquire, KeyGuard, KeyedLock as CoreLock};
use wasm_bindgen::prelude::*;

use crate::js::{coded_error, get};

/// `await lock.withLock(key, async () => ...)`: FIFO per key, released when the
/// function settles (also when it throws), entry freed when idle.
#[wasm_bindgen]
pub struct KeyedLock {
    lock: CoreLock<Key>,
    /// Milliseconds a queued call waits at most; negative: no limit.
    timeout_ms: f64,
}

/// A key: numbers compare like a `Map`'s keys (`0` and `-0` are one key, `NaN`
/// is one key), strings by their text; `1` and `'1'` are different keys.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Key {
    Number(u64),
    Text(Rc<str>),
}

fn number_key(n: f64) -> Key {
    // SameValueZero, as a Map: -0 is 0, and every NaN is the one NaN.
    let n = if n == 0.0 {
        0.0
    } else if n.is_nan() {
        f64::NAN
    } else {
        n
    };
    Key::Number(n.to_bits())
}

/// One ticket's state.
enum Slot {
    /// Unused; the next free slot (`u32::MAX`: none).
    Free(u32),
    /// The key is held by the ticket's function (released when the guard drops).
    Held { _guard: KeyGuard<Key> },
    /// Queued behind the key's holder.
    Waiting(Acquire<Key>),
}

/// Every ticket of the thread, and the wakers of the slots (created once per
/// slot, reused by every waiter that slot serves: a waker only names its slot).
struct Slots {
    slots: Vec<Slot>,
    wakers: Vec<Waker>,
    free: u32,
    /// Slots in use (held or waiting).
    live: u32,
}

const NONE: u32 = u32::MAX;

/// Past this many slots, the table is given back once no ticket is live, so a
/// burst of a million queued calls leaves nothing behind (like the core's tables).
const SLOTS_KEPT: usize = 1024;

thread_local! {
    static SLOTS: RefCell<Slots> = const {
        RefCell::new(Slots { slots: Vec::new(), wakers: Vec::new(), free: NONE, live: 0 })
    };
    /// Slots whose waiter was handed the key (pushed by their wakers, which the
    /// core calls synchronously when it hands a key over).
    static READY: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Wakes a queued ticket: the core hands the key over, then wakes the waiter.
struct SlotWaker(u32);

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        READY.with(|ready| ready.borrow_mut().push(self.0));
    }
}

impl Slots {
    fn allocate(&mut self) -> u32 {
        self.live += 1;
        if self.free != NONE {
            let slot = self.free;
            if let Slot::Free(next) = self.slots[slot as usize] {
                self.free = next;
            }
            return slot;
        }
        let slot = u32::try_from(self.slots.len()).expect("fewer than 2^31 tickets at once");
        assert!(slot < i32::MAX as u32, "fewer than 2^31 tickets at once");
        self.slots.push(Slot::Free(NONE));
        self.wakers.push(Waker::from(Arc::new(SlotWaker(slot))));
        slot
    }

    fn take(&mut self, slot: u32) -> Slot {
        let free = Slot::Free(self.free);
        let taken = std::mem::replace(&mut self.slots[slot as usize], free);
        self.free = slot;
        self.live -= 1;
        if self.live == 0 && self.slots.len() > SLOTS_KEPT {
            // No ticket names a slot any more, and no queue holds a slot's
            // waker (only waiting slots are queued): start afresh.
            *self = Slots {
                slots: Vec::new(),
                wakers: Vec::new(),
                free: NONE,
                live: 0,
            };
        }
        taken
    }
}

/// `slot` as a positive (held) ticket.
fn held_ticket(slot: u32) -> i32 {
    slot as i32 + 1
}

/// The slot of a ticket from JavaScript, if it names one.
fn slot_of(ticket: i32) -> Option<u32> {
    let slot = ticket.unsigned_abs().checked_sub(1)?;
    let exists = SLOTS.with(|s| (slot as usize) < s.borrow().slots.len());
    exists.then_some(slot)
}

/// Queue `acquire` under a new ticket: held at once (positive), or queued (negative).
fn enter(mut acquire: Acquire<Key>) -> i32 {
    SLOTS.with(|slots| {
        let mut slots = slots.borrow_mut();
        let slots = &mut *slots;
        let slot = slots.allocate();
        // Polled once with the slot's waker: a free key gives its guard at once;
        // a held one registers the waker the hand-over will call.
        let mut cx = Context::from_waker(&slots.wakers[slot as usize]);
        match Pin::new(&mut acquire).poll(&mut cx) {
            Poll::Ready(guard) => {
                slots.slots[slot as usize] = Slot::Held { _guard: guard };
                held_ticket(slot)
            }
            Poll::Pending => {
                slots.slots[slot as usize] = Slot::Waiting(acquire);
                -held_ticket(slot)
            }
        }
    })
}

/// The next waiter handed its key since the last call, collected (its ticket
/// now holds the key), or 0.
fn collect() -> i32 {
    loop {
        let Some(slot) = READY.with(|ready| ready.borrow_mut().pop()) else {
            return 0;
        };
        let collected = SLOTS.with(|slots| {
            let mut slots = slots.borrow_mut();
            let slots = &mut *slots;
            let Some(Slot::Waiting(acquire)) = slots.slots.get_mut(slot as usize) else {
                return None; // abandoned meanwhile: its hand-over was passed on
            };
            let mut cx = Context::from_waker(&slots.wakers[slot as usize]);
            match Pin::new(acquire).poll(&mut cx) {
                Poll::Ready(guard) => {
                    slots.slots[slot as usize] = Slot::Held { _guard: guard };
                    Some(held_ticket(slot))
                }
                Poll::Pending => None, // not handed over after all: still queued
            }
        });
        if let Some(ticket) = collected {
            return ticket;
        }
    }
}

/// Give up the key held by `ticket`; answers the ticket of the waiter it was
/// handed to (which now holds it), or 0. A ticket that holds nothing is ignored.
#[wasm_bindgen(js_name = __plRelease, skip_typescript)]
pub fn release(ticket: i32) -> i32 {
    if ticket <= 0 {
        return 0;
    }
    let Some(slot) = slot_of(ticket) else {
        return 0;
    };
    let released = SLOTS.with(|slots| {
        let mut slots = slots.borrow_mut();
        match slots.slots[slot as usize] {
            Slot::Held { .. } => Some(slots.take(slot)),
            _ => None,
        }
    });
    // Dropped outside the borrow: the hand-over wakes the next waiter's slot.
    drop(released);
    collect()
}

/// Another ticket handed its key by the last release or abandon, or 0.
#[wasm_bindgen(js_name = __plGranted, skip_typescript)]
pub fn granted() -> i32 {
    collect()
}

/// The queued `ticket` timed out: it leaves the queue (counted as a timeout).
/// Answers a ticket granted because of it (0: none), as `release` does.
#[wasm_bindgen(js_name = __plAbandon, skip_typescript)]
pub fn abandon(ticket: i32) -> i32 {
    if ticket >= 0 {
        return 0;
    }
    let Some(slot) = slot_of(ticket) else {
        return 0;
    };
    let abandoned = SLOTS.with(|slots| {
        let mut slots = slots.borrow_mut();
        match slots.slots[slot as usize] {
            Slot::Waiting(_) => Some(slots.take(slot)),
            _ => None,
        }
    });
    if let Some(Slot::Waiting(acquire)) = abandoned {
        acquire.abandon_timed_out();
    }
    collect()
}

#[wasm_bindgen]
impl KeyedLock {
    /// `new KeyedLock({ timeoutMs })`; without `timeoutMs` waits are unbounded.
    #[wasm_bindgen(constructor)]
    pub fn new(
        #[wasm_bindgen(unchecked_optional_param_type = "KeyedLockOptions")] options: Option<
            JsValue,
        >,
    ) -> Result<KeyedLock, JsValue> {
        let options = options.unwrap_or(JsValue::UNDEFINED);
        let timeout_ms = match get(&options, "timeoutMs") {
            None => -1.0,
            Some(v) => match v.as_f64() {
                Some(ms) if ms.is_finite() && ms >= 0.0 => ms.floor(),
                _ => {
                    return Err(coded_error(
                        "INVALID_OPTION",
                        "timeoutMs must be a non-negative number",
                    ))
                }
            },
        };
        Ok(Self {
            lock: CoreLock::new(),
            timeout_ms,
        })
    }

    /// Queue for a number key now: a positive ticket holds it, a negative one waits.
    #[wasm_bindgen(js_name = __lockNumber, skip_typescript)]
    pub fn lock_number(&self, key: f64) -> i32 {
        enter(self.lock.lock(number_key(key)))
    }

    /// Queue for a string key now, as `__lockNumber`.
    #[wasm_bindgen(js_name = __lockString, skip_typescript)]
    pub fn lock_string(&self, key: &str) -> i32 {
        enter(self.lock.lock(Key::Text(Rc::from(key))))
    }

    /// Milliseconds a queued call waits at most; negative: no limit.
    #[wasm_bindgen(getter, js_name = __timeoutMs, skip_typescript)]
    pub fn timeout_ms(&self) -> f64 {
        self.timeout_ms
    }

    /// The number of keys held or awaited.
    #[wasm_bindgen(getter)]
    pub fn size(&self) -> usize {
        self.lock.len()
    }
}
