//! [`HeldLock`]: the request's key and its guard, as the inner service sees them.

use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, PoisonError, Weak};

use crate::KeyGuard;

/// The key's guard as the inner service sees it, in the request's extensions.
///
/// It holds the key and only a *weak* handle on the layer's hold of the guard:
/// an inner service that keeps the request, or this extension, past its
/// response does not keep the key locked. [`guard`](Self::guard) lends a strong
/// handle for work that must finish under the lock even if the response is
/// dropped; a strong handle kept longer keeps the key locked longer.
/// [`take`](Self::take) takes the layer's own hold over: from then on the key
/// is held exactly as long as the taken guard (and its clones) live.
#[derive(Clone)]
pub struct HeldLock<K: Hash + Eq + Clone> {
    key: K,
    slot: Weak<GuardSlot<K>>,
}

/// The layer's hold of a key's guard, which the inner service may take over.
pub(super) type GuardSlot<K> = std::sync::Mutex<Option<Arc<KeyGuard<K>>>>;

impl<K: Hash + Eq + Clone> HeldLock<K> {
    /// The handle on `slot` (the layer keeps the strong one) for `key`.
    pub(super) fn new(key: K, slot: &Arc<GuardSlot<K>>) -> Self {
        Self {
            key,
            slot: Arc::downgrade(slot),
        }
    }

    /// The locked key.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// A strong handle on the guard while the layer still holds it for this
    /// request (always, while the inner service works on it, unless it was
    /// [taken](Self::take)); `None` once released or taken.
    pub fn guard(&self) -> Option<Arc<KeyGuard<K>>> {
        let slot = self.slot.upgrade()?;
        let held = slot.lock().unwrap_or_else(PoisonError::into_inner);
        held.clone()
    }

    /// Take the layer's hold of the guard: the layer will not release the key
    /// when the response is ready; the caller's guard (and any clone of it)
    /// does, when dropped. `None` if the key is no longer held by this request
    /// or was taken already.
    pub fn take(&self) -> Option<Arc<KeyGuard<K>>> {
        let slot = self.slot.upgrade()?;
        let mut held = slot.lock().unwrap_or_else(PoisonError::into_inner);
        held.take()
    }
}

impl<K: Hash + Eq + Clone + fmt::Debug> fmt::Debug for HeldLock<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldLock").field("key", &self.key).finish()
    }
}
