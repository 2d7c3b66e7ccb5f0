"""Tests for exact page content identities."""

import mmh3
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dedup.content import (
    PAGE_SIZE,
    SYNTHETIC_BASE,
    ZERO_CONTENT,
    ContentStore,
    fingerprint64,
)


def make_pages(*fills: int) -> np.ndarray:
    """One page per fill byte, every byte of the page set to it."""
    pages = np.empty((len(fills), PAGE_SIZE), dtype=np.uint8)
    for row, fill in enumerate(fills):
        pages[row] = fill
    return pages


def random_pages(n: int, seed: int = 0) -> np.ndarray:
    """n pages of random bytes, distinct with overwhelming odds."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, PAGE_SIZE), dtype=np.uint8)


def test_zero_page_is_zero_content():
    store = ContentStore()
    assert store.distinct_pages == 0
    cids = store.intern_pages(make_pages(0, 0))
    assert cids.tolist() == [ZERO_CONTENT, ZERO_CONTENT]
    assert cids.dtype == np.int64
    assert store.distinct_pages == 1


def test_ids_follow_first_appearance():
    store = ContentStore()
    cids = store.intern_pages(make_pages(5, 0, 9, 5, 7, 9))
    assert cids.tolist() == [1, 0, 2, 1, 3, 2]
    assert store.distinct_pages == 4


def test_equal_pages_get_same_id_across_calls():
    store = ContentStore()
    pages = random_pages(50)
    first = store.intern_pages(pages)
    again = store.intern_pages(pages[::-1].copy())
    assert np.array_equal(again, first[::-1])
    assert store.distinct_pages == 50
    assert store.bytes_compared == 50 * PAGE_SIZE


def test_different_pages_get_different_ids():
    pages = make_pages(1, 1)
    pages[1, -1] = 2
    cids = ContentStore().intern_pages(pages)
    assert cids[0] != cids[1]


def test_same_pages_give_same_ids_in_fresh_stores():
    pages = random_pages(20)[np.array([3, 1, 3, 0, 19, 1])]
    first = ContentStore().intern_pages(pages)
    second = ContentStore().intern_pages(pages)
    assert np.array_equal(first, second)


def test_more_pages_than_one_sub_batch():
    base = random_pages(300, seed=1)
    order = np.random.default_rng(2).integers(0, 300, 20_000)
    pages = base[order]
    cids = ContentStore().intern_pages(pages)
    first_seen = {}
    for cid, row in zip(cids.tolist(), order.tolist(), strict=True):
        assert first_seen.setdefault(row, cid) == cid
    assert len(set(cids.tolist())) == len(set(order.tolist()))


def test_forced_collision_never_merges_different_pages():
    store = ContentStore(hash_fn=lambda page: 7)
    cids = store.intern_pages(make_pages(1, 2, 1, 0, 2))
    assert cids.tolist() == [1, 2, 1, 0, 2]
    assert store.distinct_pages == 3
    assert store.collisions > 0
    assert store.bytes_compared >= 5 * PAGE_SIZE


def test_collision_counter_counts_mismatched_comparisons():
    # Stored: zero page, then 1. A new page 2 is compared with both.
    store = ContentStore(hash_fn=lambda page: 7)
    store.intern_pages(make_pages(1))
    before = store.collisions
    store.intern_pages(make_pages(2))
    assert store.collisions - before == 2


def test_collision_between_batches_is_verified():
    store = ContentStore(hash_fn=lambda page: page[0])
    first = store.intern_pages(make_pages(3))
    other = make_pages(3)
    other[0, 100] = 4
    second = store.intern_pages(np.vstack([other, make_pages(3)]))
    assert second.tolist() == [2, first[0]]
    assert store.collisions == 1


def test_fingerprint_and_page_bytes_round_trip():
    store = ContentStore()
    pages = np.vstack([random_pages(3), make_pages(0)])
    cids = store.intern_pages(pages)
    fps = store.fingerprint(cids)
    assert fps.dtype == np.uint64
    for cid, page, fp in zip(cids, pages, fps, strict=True):
        assert store.page_bytes(int(cid)) == page.tobytes()
        assert int(fp) == fingerprint64(page.tobytes())


def test_zero_content_bytes_without_interning():
    assert ContentStore().page_bytes(ZERO_CONTENT) == bytes(PAGE_SIZE)


def test_unknown_ids_are_refused():
    store = ContentStore()
    store.intern_pages(make_pages(1))
    with pytest.raises(ValueError, match="2"):
        store.page_bytes(2)
    with pytest.raises(ValueError):
        store.fingerprint(np.array([SYNTHETIC_BASE]))


def test_fingerprint64_matches_mmh3_hash64():
    page = random_pages(1)[0]
    expected = mmh3.hash64(page.tobytes(), signed=False)[0]
    assert fingerprint64(page.tobytes()) == expected
    assert fingerprint64(memoryview(page.tobytes())) == expected


def test_bad_shapes_are_refused():
    store = ContentStore()
    with pytest.raises(ValueError):
        store.intern_pages(np.zeros((2, 100), dtype=np.uint8))
    with pytest.raises(ValueError):
        store.intern_pages(np.zeros((2, PAGE_SIZE), dtype=np.int64))


def test_empty_input():
    cids = ContentStore().intern_pages(np.zeros((0, PAGE_SIZE), np.uint8))
    assert cids.shape == (0,)


def test_non_contiguous_input():
    pages = random_pages(6)
    store = ContentStore()
    assert np.array_equal(
        store.intern_pages(pages[::2]), store.intern_pages(pages[::2].copy())
    )


# A page is a short pattern from a tiny alphabet repeated to 4 KiB, so
# that random draws repeat often and equal pages are common.
page_patterns = st.lists(
    st.lists(st.sampled_from([0, 1, 255]), min_size=1, max_size=3),
    min_size=1,
    max_size=24,
)


def pattern_page(pattern: list[int]) -> bytes:
    return bytes(pattern * (PAGE_SIZE // len(pattern) + 1))[:PAGE_SIZE]


@settings(max_examples=60, deadline=None)
@given(patterns=page_patterns, colliding=st.booleans())
def test_ids_equal_iff_bytes_equal(patterns, colliding):
    raw = [pattern_page(p) for p in patterns]
    pages = np.frombuffer(b"".join(raw), dtype=np.uint8)
    pages = pages.reshape(-1, PAGE_SIZE)
    store = ContentStore(hash_fn=(lambda page: 7) if colliding else None)
    cids = store.intern_pages(pages).tolist()
    for i in range(len(raw)):
        for j in range(len(raw)):
            assert (cids[i] == cids[j]) == (raw[i] == raw[j])
        assert store.page_bytes(cids[i]) == raw[i]
        assert (cids[i] == ZERO_CONTENT) == (raw[i] == bytes(PAGE_SIZE))
    assert store.distinct_pages == len(set(raw))
