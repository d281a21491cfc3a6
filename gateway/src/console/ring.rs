//! A bounded ring of samples: the newest `capacity`, oldest first. The console keeps its
//! chart history in one, so the gateway's memory for it is fixed however long it runs.

use std::collections::VecDeque;

#[derive(Debug, Clone)]
pub(crate) struct Ring<T> {
    items: VecDeque<T>,
    capacity: usize,
}

impl<T> Ring<T> {
    /// A ring holding at most `capacity` (at least 1) items.
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            items: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Appends `item`, dropping the oldest when full.
    pub(crate) fn push(&mut self, item: T) {
        if self.items.len() == self.capacity {
            self.items.pop_front();
        }
        self.items.push_back(item);
    }

    /// Oldest first.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + ExactSizeIterator {
        self.items.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_in_order() {
        let mut ring = Ring::new(3);
        assert_eq!(ring.iter().count(), 0);
        for i in 1..=2 {
            ring.push(i);
        }
        assert_eq!(ring.iter().copied().collect::<Vec<_>>(), [1, 2]);
        for i in 3..=7 {
            ring.push(i);
        }
        assert_eq!(ring.iter().copied().collect::<Vec<_>>(), [5, 6, 7]);
        assert_eq!(ring.iter().next_back(), Some(&7));
        let mut tiny = Ring::new(0);
        tiny.push('a');
        tiny.push('b');
        assert_eq!(tiny.iter().collect::<String>(), "b");
    }
}
