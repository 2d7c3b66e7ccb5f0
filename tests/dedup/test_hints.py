"""Hint verification: only pages with equal bytes are ever merged."""

import numpy as np

from dedup.content import PAGE_SIZE, ContentStore
from dedup.hints import (
    DISK,
    LIBRARY,
    O_ALREADY,
    O_FIRST,
    O_MISMATCH,
    O_SHARED,
    O_UNPOPULATED,
    HintBatch,
    HintTable,
    disk_keys,
    library_keys,
)
from dedup.memory import HostMemory


def batch(domids, gfns, keys, source=DISK):
    n = len(gfns)
    return HintBatch(
        np.asarray(domids, np.int32),
        np.asarray(gfns, np.int64),
        np.asarray(keys, np.int64),
        np.full(n, source, np.int8),
    )


def host(n_doms=3, pages=4):
    m = HostMemory(64)
    for d in range(1, n_doms + 1):
        m.create_domain(d, pages)
    return m


def test_forced_fingerprint_collision_never_merges_different_pages():
    # Every page gets the same fingerprint: all are candidates, but the
    # store compares bytes, so different pages keep different content ids.
    store = ContentStore(hash_fn=lambda page: 7)
    pages = np.zeros((3, PAGE_SIZE), np.uint8)
    pages[0, 0], pages[1, 0], pages[2, 0] = 1, 2, 1
    cids = store.intern_pages(pages)
    assert cids[0] == cids[2] != cids[1]
    assert store.collisions >= 1

    m = host()
    for d, cid in zip((1, 2, 3), cids, strict=True):
        m.write(d, [0], [cid])
    key = disk_keys(1, np.array([0]))[0]  # all three claim the same block
    table = HintTable()
    table.process(m, batch([1, 2, 3], [0, 0, 0], [key] * 3))
    assert m.read(1, [0])[0] == cids[0]
    assert m.read(2, [0])[0] == cids[1]
    assert m.domain_p2m(1)[0] == m.domain_p2m(3)[0]  # equal bytes: shared
    assert m.domain_p2m(2)[0] != m.domain_p2m(1)[0]  # collision: not
    assert table.outcomes[DISK, O_MISMATCH] == 1
    assert table.outcomes[DISK, O_SHARED] == 1
    m.check()


def test_outcomes_first_already_unpopulated():
    m = host()
    m.write(1, [0], [5])
    m.write(2, [0], [5])
    key = disk_keys(1, np.array([3]))[0]
    table = HintTable()
    table.process(m, batch([1], [0], [key]))
    assert table.outcomes[DISK, O_FIRST] == 1
    table.process(m, batch([2, 1], [0, 0], [key, key]))
    assert table.outcomes[DISK, O_SHARED] == 1
    assert table.outcomes[DISK, O_ALREADY] == 1
    m.balloon_out(3, [1])
    table.process(m, batch([3], [1], [key]))
    assert table.outcomes[DISK, O_UNPOPULATED] == 1
    m.check()


def test_stale_entry_is_replaced_when_its_frame_was_rewritten():
    m = host()
    m.write(1, [0], [5])
    key = disk_keys(1, np.array([0]))[0]
    table = HintTable()
    table.process(m, batch([1], [0], [key]))
    m.write(1, [0], [6])  # the recorded frame no longer holds the block
    m.write(2, [0], [5])
    m.write(3, [0], [5])
    table.process(m, batch([2, 3], [0, 0], [key, key]))
    assert m.domain_p2m(2)[0] == m.domain_p2m(3)[0]
    assert m.read(1, [0])[0] == 6
    m.check()


def test_same_page_hinted_by_disk_and_library_in_one_batch():
    m = host()
    for d in (1, 2, 3):
        m.write(d, [0], [9])
    dk = disk_keys(1, np.array([0]))[0]
    dk2 = disk_keys(2, np.array([0]))[0]
    lk = library_keys(1234, np.array([0]))[0]
    table = HintTable()
    b1 = batch([1, 2], [0, 0], [dk, dk2])
    b2 = batch([1, 2, 3], [0, 0, 0], [lk, lk, lk], LIBRARY)
    table.process(m, HintBatch.concat([b1, b2]))
    assert len({int(m.domain_p2m(d)[0]) for d in (1, 2, 3)}) == 1
    m.check()


def test_keys_differ_by_image_and_block():
    a = disk_keys(1, np.arange(1000))
    b = disk_keys(2, np.arange(1000))
    c = library_keys(77, np.arange(1000))
    assert np.unique(np.concatenate([a, b, c])).size == 3000
