"""The sharing mechanism: hypercalls, write faults, reverse maps.

The property tests drive ``HostMemory`` with random sequences of writes,
hint batches, raw hypercalls, balloon-outs and domain shutdowns, and keep
a plain dict of what every guest should read. Sharing must be invisible:
after every step each guest reads exactly that, and frames are conserved.
"""

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from dedup.content import ZERO_CONTENT
from dedup.errors import ShareError
from dedup.frames import COW_DOMAIN, FREE
from dedup.hints import DISK, ZERO, ZERO_KEY, HintBatch, HintTable
from dedup.memory import (
    CONTENT_DIFFERS,
    NOT_READ_ONLY,
    SAME_FRAME,
    SHARED,
    WRITTEN_SINCE_MARK,
    HostMemory,
)


def two_guests(frames=64, pages=8):
    m = HostMemory(frames)
    m.create_domain(1, pages)
    m.create_domain(2, pages)
    return m


def mfn(m, domid, gfn):
    return int(m.domain_p2m(domid)[gfn])


def share_gfn0(m, content):
    """Write ``content`` at GFN 0 of domains 1 and 2 and share the two
    frames; return (kept frame, freed frame)."""
    m.write(1, [0], [content])
    m.write(2, [0], [content])
    a, b = mfn(m, 1, 0), mfn(m, 2, 0)
    m.mark_page_ro(np.array([a, b]))
    m.share_mfn(a, b, DISK)
    return a, b


def test_fresh_domain_is_logically_zero_and_private():
    m = two_guests()
    assert np.all(m.read(1, np.arange(8)) == ZERO_CONTENT)
    assert m.frames.census() == {"free": 48, "private": 16, "shared": 0}
    m.check()


def test_share_requires_read_only():
    m = two_guests()
    m.write(1, [0], [7])
    m.write(2, [0], [7])
    a, b = mfn(m, 1, 0), mfn(m, 2, 0)
    codes = m.share_mfns(np.array([a]), np.array([b]), DISK)
    assert codes.tolist() == [NOT_READ_ONLY]
    m.mark_page_ro(np.array([a]))
    with pytest.raises(ShareError, match="not read-only"):
        m.share_mfn(a, b, DISK)
    m.check()


def test_share_refuses_different_content():
    m = two_guests()
    m.write(1, [0], [7])
    m.write(2, [0], [8])
    a, b = mfn(m, 1, 0), mfn(m, 2, 0)
    m.mark_page_ro(np.array([a, b]))
    codes = m.share_mfns(np.array([a]), np.array([b]), DISK)
    assert codes.tolist() == [CONTENT_DIFFERS]
    assert m.frames.owner[a] == 1 and m.frames.owner[b] == 2


def test_share_refuses_frame_written_since_marked():
    m = two_guests()
    m.write(1, [0], [7])
    m.write(2, [0], [7])
    a, b = mfn(m, 1, 0), mfn(m, 2, 0)
    m.mark_page_ro(np.array([a, b]))
    m.write(2, [0], [9])  # private and alone: becomes writable, no copy
    m.write(2, [0], [7])  # same bytes again, but not re-marked
    m.frames.ro[b] = True  # even if something set it read-only again
    codes = m.share_mfns(np.array([a]), np.array([b]), DISK)
    assert codes.tolist() == [WRITTEN_SINCE_MARK]


def test_share_same_frame_is_a_no_op():
    m = two_guests()
    a = mfn(m, 1, 0)
    m.mark_page_ro(np.array([a]))
    codes = m.share_mfns(np.array([a]), np.array([a]), DISK)
    assert codes.tolist() == [SAME_FRAME]


def test_share_remaps_client_and_frees_it():
    m = two_guests()
    m.write(1, [3], [42])
    m.write(2, [5], [42])
    a, b = mfn(m, 1, 3), mfn(m, 2, 5)
    m.mark_page_ro(np.array([a, b]))
    m.share_mfn(a, b, DISK)
    assert mfn(m, 2, 5) == a
    assert m.frames.owner[a] == COW_DOMAIN
    assert m.frames.owner[b] == FREE
    assert sorted(m.mappers(a)) == [(1, 3), (2, 5)]
    assert m.sharing() == {"shared_frames": 1, "sharing_mappings": 1}
    m.check()


def test_merging_two_shared_frames_moves_every_mapping():
    m = HostMemory(64)
    for d in (1, 2, 3, 4):
        m.create_domain(d, 4)
        m.write(d, [0], [5])
    f = [mfn(m, d, 0) for d in (1, 2, 3, 4)]
    m.mark_page_ro(np.array(f))
    m.share_mfn(f[0], f[1], DISK)
    m.share_mfn(f[2], f[3], DISK)
    m.share_mfn(f[0], f[2], DISK)
    assert sorted(m.mappers(f[0])) == [(1, 0), (2, 0), (3, 0), (4, 0)]
    assert m.frames.count[f[0]] == 4
    m.check()


def test_chained_pairs_in_one_batch():
    m = HostMemory(64)
    for d in (1, 2, 3):
        m.create_domain(d, 2)
        m.write(d, [0], [5])
    a, b, c = (mfn(m, d, 0) for d in (1, 2, 3))
    m.mark_page_ro(np.array([a, b, c]))
    codes = m.share_mfns(np.array([a, b, a]), np.array([b, c, c]), DISK)
    assert codes[0] == SHARED and codes[1] == SHARED
    assert {mfn(m, d, 0) for d in (1, 2, 3)} == {a}
    m.check()


def test_write_fault_copies_and_last_mapping_goes_private():
    m = two_guests()
    a, b = share_gfn0(m, 42)
    out = m.write(2, [0], [43])
    assert (out.faults_copy, out.faults_last) == (1, 0)
    assert mfn(m, 2, 0) != a
    out = m.write(1, [0], [44])
    assert (out.faults_copy, out.faults_last) == (0, 1)
    assert mfn(m, 1, 0) == a and m.frames.owner[a] == 1
    assert m.read(1, [0]).tolist() == [44]
    assert m.read(2, [0]).tolist() == [43]
    m.check()


def test_write_fault_on_zero_page_needs_no_copy():
    m = two_guests()
    table = HintTable()
    gfns = np.arange(8)
    table.process(
        m,
        HintBatch(
            np.repeat(np.array([1, 2], np.int32), 8),
            np.concatenate([gfns, gfns]),
            np.full(16, ZERO_KEY),
            np.full(16, ZERO, np.int8),
        ),
    )
    assert m.sharing()["sharing_mappings"] == 15
    out = m.write(1, [0, 1, 2], [1, 2, 3])
    assert out.faults_nocopy == 3 and out.faults_copy == 0
    assert m.counters.bytes_copied == 0
    m.check()


def test_unsatisfied_fault_leaves_the_page_untouched():
    m = HostMemory(16)
    m.create_domain(1, 8)
    m.create_domain(2, 8)  # every frame in use
    a, b = share_gfn0(m, 7)
    m.create_domain(3, 1)  # takes the freed frame
    out = m.write(2, [0], [8])
    assert out.unsatisfied.tolist() == [0]
    assert m.read(2, [0]).tolist() == [7]
    assert m.counters.faults_unsatisfied == 1
    m.check()


def test_reclaim_is_asked_for_frames_when_the_pool_is_empty():
    m = HostMemory(16)
    m.create_domain(1, 8)
    m.create_domain(2, 7)
    m.create_domain(3, 1)
    a, b = share_gfn0(m, 7)
    m.create_domain(4, 1)
    asked = []

    def reclaim(n):
        asked.append(n)
        return m.balloon_out(3, [0])

    out = m.write(2, [0], [8], reclaim=reclaim)
    assert asked == [1]
    assert out.unsatisfied.size == 0
    assert m.read(3, [0]).tolist() == [-1]  # given up to serve the fault
    assert m.read(2, [0]).tolist() == [8]
    assert m.read(1, [0]).tolist() == [7]
    assert m.counters.frames_reclaimed == 1
    m.check()


def test_destroy_domain_frees_its_frames_and_keeps_shared_ones():
    m = two_guests()
    a, b = share_gfn0(m, 42)
    freed = m.destroy_domain(1)
    assert freed == 7  # the shared frame stays, held by domain 2
    assert m.read(2, [0]).tolist() == [42]
    m.check()


# Property test ----------------------------------------------------------

N_DOMS, N_PAGES, N_FRAMES = 3, 12, 48
CONTENTS = st.sampled_from([0, 1, 2, 3, 4])


def _op():
    dom = st.integers(1, N_DOMS)
    gfns = st.lists(st.integers(0, N_PAGES - 1), min_size=1, max_size=6)
    return st.one_of(
        st.tuples(
            st.just("write"),
            dom,
            gfns,
            st.lists(CONTENTS, min_size=6, max_size=6),
        ),
        st.tuples(st.just("hint"), dom, gfns, st.integers(0, 2)),
        st.tuples(st.just("share"), dom, gfns, dom, gfns),
        st.tuples(st.just("balloon"), dom, gfns),
        st.tuples(st.just("populate"), dom, gfns),
        st.tuples(st.just("destroy"), dom),
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(_op(), max_size=40))
def test_sharing_is_invisible_and_frames_are_conserved(ops):
    m = HostMemory(N_FRAMES)
    expect = {}
    alive = set(range(1, N_DOMS + 1))
    for d in alive:
        m.create_domain(d, N_PAGES)
        expect.update({(d, g): 0 for g in range(N_PAGES)})
    table = HintTable()
    for op in ops:
        kind, d = op[0], op[1]
        if d not in alive:
            continue
        gfns = np.array(op[2], dtype=np.int64) if len(op) > 2 else None
        populated = gfns[m.read(d, gfns) >= 0] if gfns is not None else None
        if kind == "write":
            contents = np.array(op[3][: populated.size], dtype=np.int64)
            out = m.write(d, populated, contents)
            assert out.unsatisfied.size == 0  # never short: no overcommit
            for g, c in zip(
                populated.tolist(), contents.tolist(), strict=True
            ):
                expect[(d, g)] = c
        elif kind == "hint":
            # Keys claim content by value, sometimes wrongly (salt).
            salt = op[3]
            claimed = (m.read(d, populated) + salt) % 5
            table.process(
                m,
                HintBatch(
                    np.full(populated.size, d, np.int32),
                    populated,
                    claimed,
                    np.full(populated.size, DISK, np.int8),
                ),
            )
        elif kind == "share":
            d2 = op[3] if op[3] in alive else d
            g2 = np.array(op[4], dtype=np.int64)
            g2 = g2[m.read(d2, g2) >= 0]
            n = min(populated.size, g2.size)
            src = m.domain_p2m(d)[populated[:n]]
            cli = m.domain_p2m(d2)[g2[:n]]
            m.mark_page_ro(np.union1d(src, cli))
            m.share_mfns(src, cli, DISK)
        elif kind == "balloon":
            m.balloon_out(d, gfns)
            for g in gfns.tolist():
                expect[(d, g)] = -1
        elif kind == "populate":
            left = m.populate(d, gfns)
            assert left.size == 0
            for g in gfns.tolist():
                if expect[(d, g)] == -1:
                    expect[(d, g)] = 0
        elif kind == "destroy":
            m.destroy_domain(d)
            alive.discard(d)
        m.check()
        for dom in alive:
            got = m.read(dom, np.arange(N_PAGES)).tolist()
            want = [expect[(dom, g)] for g in range(N_PAGES)]
            assert got == want
    c = m.counters
    event(f"shares: {c.shares > 0}")
    event(f"copying faults: {c.faults_copy > 0}")
    event(f"last-mapping faults: {c.faults_last > 0}")
