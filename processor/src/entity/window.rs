//! The idempotency window of an active entity: the replies of its recent state-changing
//! commands that carried an idempotency key, so a retry with the same key gets the original
//! reply without running again. Rebuilt at activation from what the kind stored with its
//! records (the reply on an event, the `recent` list of a value record).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::command::Reply;

/// Keys remembered per active entity: above what activation rebuilds (the event-sourced kind
/// reads back 200 events), and small enough that a busy entity's window stays a few tens of
/// KB (a window of 1,000 made a busy cart cost ~250 KB in the R15 soak; 256 ≈ 60 KB).
pub(crate) const CAPACITY: usize = 256;

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Window {
    replies: HashMap<Arc<str>, Reply>,
    /// Keys, oldest first (the same allocations as the map's).
    order: VecDeque<Arc<str>>,
}

impl Window {
    /// The reply remembered for `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&Reply> {
        self.replies.get(key)
    }

    /// Remember `reply` for `key` (the first reply of a key stays); the oldest key goes when
    /// the window is full.
    pub(crate) fn remember(&mut self, key: String, reply: Reply) {
        if self.replies.contains_key(key.as_str()) {
            return;
        }
        let key: Arc<str> = key.into();
        self.replies.insert(Arc::clone(&key), reply);
        self.order.push_back(key);
        if self.order.len() > CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.replies.remove(&old);
        }
    }

    /// The `n` most recent keys and replies, oldest first.
    pub(crate) fn recent(&self, n: usize) -> impl Iterator<Item = (&str, &Reply)> {
        let skip = self.order.len().saturating_sub(n);
        self.order
            .iter()
            .skip(skip)
            .map(|key| (&**key, &self.replies[key]))
    }

    pub(crate) fn clear(&mut self) {
        self.replies.clear();
        self.order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_first_reply_per_key_and_forgets_the_oldest() {
        let mut window = Window::default();
        window.remember("a".into(), Reply::Empty);
        window.remember("a".into(), Reply::failure("later"));
        assert_eq!(window.get("a"), Some(&Reply::Empty));
        for i in 0..CAPACITY {
            window.remember(format!("k{i}"), Reply::Empty);
        }
        assert_eq!(window.get("a"), None, "the oldest key left");
        assert!(window.get("k0").is_some());
        let recent: Vec<&str> = window.recent(2).map(|(k, _)| k).collect();
        assert_eq!(
            recent,
            [format!("k{}", CAPACITY - 2), format!("k{}", CAPACITY - 1)]
        );
        window.clear();
        assert_eq!(window.recent(5).count(), 0);
    }
}
