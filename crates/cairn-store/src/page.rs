//! Pages of keys: how much one read may return, and what it says about the rest.
//!
//! Every page a shard answers crosses the peer transport when the read was forwarded,
//! and every transport frame has a size cap. So a page is bounded twice: by a count of
//! keys (what the client asked for) and by an estimate of its encoded bytes (what the
//! wire and the node's memory can carry). A page that stops at either bound says so
//! with `more`, and the caller continues after its last key; the first key of a page is
//! always returned, however large, so paging always moves forward (one key and value
//! fit a frame by construction: the server checks its limits against the cap when the
//! configuration loads).

use serde::{Deserialize, Serialize};

/// The byte budget of a page unless configured otherwise.
pub const DEFAULT_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Bytes a key-value item costs in a page beyond its key and value: lengths, version
/// and enum tags in the wire encoding (bincode), rounded up.
pub const ITEM_OVERHEAD_BYTES: usize = 32;

/// How much one page may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageLimit {
    /// At most this many keys.
    pub items: usize,
    /// At most about this many bytes (keys, values and [`ITEM_OVERHEAD_BYTES`] per
    /// key); exceeded only by a page's first key.
    pub bytes: usize,
}

impl PageLimit {
    /// A limit on the number of keys only.
    pub fn items(items: usize) -> PageLimit {
        PageLimit {
            items,
            bytes: usize::MAX,
        }
    }

    /// Whether a page holding `items` keys of `bytes` bytes has room for one more of
    /// `next` bytes. An empty page always has room, so a page is never empty for want
    /// of space.
    pub fn has_room(&self, items: usize, bytes: usize, next: usize) -> bool {
        items == 0 || (items < self.items && bytes.saturating_add(next) <= self.bytes)
    }
}

impl From<usize> for PageLimit {
    fn from(items: usize) -> PageLimit {
        PageLimit::items(items)
    }
}

/// One page of keys in key order, with what each maps to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<(Vec<u8>, T)>,
    /// The page stopped at its limit: keys may follow its last one.
    pub more: bool,
}

impl<T> Page<T> {
    pub fn new() -> Page<T> {
        Page {
            items: Vec::new(),
            more: false,
        }
    }

    /// Bytes an item of this key and value size costs against [`PageLimit::bytes`].
    pub fn cost(key: usize, value: usize) -> usize {
        key.saturating_add(value)
            .saturating_add(ITEM_OVERHEAD_BYTES)
    }
}

impl<T> Default for Page<T> {
    fn default() -> Self {
        Page::new()
    }
}

/// Fills a page item by item, stopping at its limit.
#[derive(Debug)]
pub struct PageBuilder<T> {
    limit: PageLimit,
    bytes: usize,
    page: Page<T>,
}

impl<T> PageBuilder<T> {
    pub fn new(limit: PageLimit) -> PageBuilder<T> {
        PageBuilder {
            limit,
            bytes: 0,
            page: Page::new(),
        }
    }

    /// Whether the page is already full by count (nothing more can be added).
    pub fn is_full(&self) -> bool {
        self.page.more || self.page.items.len() >= self.limit.items
    }

    /// Add an item costing `cost` bytes; returns false (and marks the page as having
    /// more) if it did not fit, in which case the caller stops.
    pub fn push(&mut self, key: Vec<u8>, value: T, cost: usize) -> bool {
        if self.page.more || !self.limit.has_room(self.page.items.len(), self.bytes, cost) {
            self.page.more = true;
            return false;
        }
        self.bytes = self.bytes.saturating_add(cost);
        self.page.items.push((key, value));
        if self.page.items.len() >= self.limit.items {
            self.page.more = true;
        }
        true
    }

    pub fn finish(self) -> Page<T> {
        self.page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_stops_at_its_count_or_its_bytes_but_never_empty() {
        let mut by_count = PageBuilder::new(PageLimit {
            items: 2,
            bytes: 1000,
        });
        assert!(by_count.push(b"a".to_vec(), (), 10));
        assert!(!by_count.is_full());
        assert!(by_count.push(b"b".to_vec(), (), 10));
        assert!(by_count.is_full());
        assert!(!by_count.push(b"c".to_vec(), (), 10));
        let page = by_count.finish();
        assert_eq!(page.items.len(), 2);
        assert!(page.more);

        let mut by_bytes = PageBuilder::new(PageLimit {
            items: 100,
            bytes: 100,
        });
        // The first item goes in however large it is.
        assert!(by_bytes.push(b"a".to_vec(), (), 500));
        assert!(!by_bytes.push(b"b".to_vec(), (), 1));
        let page = by_bytes.finish();
        assert_eq!(page.items.len(), 1);
        assert!(page.more);

        let mut roomy = PageBuilder::new(PageLimit::items(10));
        assert!(roomy.push(b"a".to_vec(), (), usize::MAX));
        assert!(roomy.push(b"b".to_vec(), (), usize::MAX));
        let page = roomy.finish();
        assert!(!page.more, "a page below its limits says nothing follows");
    }
}
