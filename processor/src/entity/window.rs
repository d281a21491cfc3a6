//! The idempotency window of an active entity: the replies of its recent state-changing
//! commands that carried an idempotency key, so a retry with the same key gets the original
//! reply without running again. Rebuilt at activation from what the kind stored with its
//! records (the reply on an event, the `recent` list of a value record).

use std::collections::{HashMap, VecDeque};

use crate::command::Reply;

/// Keys remembered per active entity.
pub(crate) const CAPACITY: usize = 1_000;

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Window {
    replies: HashMap<String, Reply>,
    /// Keys, oldest first.
    order: VecDeque<String>,
}

impl Window {
    /// The reply remembered for `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&Reply> {
        self.replies.get(key)
    }

    /// Remember `reply` for `key` (the first reply of a key stays); the oldest key goes when
    /// the window is full.
    pub(crate) fn remember(&mut self, key: String, reply: Reply) {
        if self.replies.contains_key(&key) {
            return;
        }
        self.replies.insert(key.clone(), reply);
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
            .map(|key| (key.as_str(), &self.replies[key]))
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
