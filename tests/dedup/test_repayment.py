"""Bonus pages and repayment FIFOs, driven by random operation sequences.

A plain dict keeps what every guest should read. Sharing and repayment
must never change a guest's content, except that a volatile page given up
to the FIFO is gone (it reads as unpopulated); frames are conserved and
every FIFO stays at least as long as its domain's bonus pages.
"""

import numpy as np
from hypothesis import event, given, settings
from hypothesis import strategies as st

from dedup.content import ZERO_CONTENT
from dedup.hints import DISK, HintBatch, HintTable
from dedup.memory import HostMemory
from dedup.repayment import Repayment

N_DOMS, BASE, BONUS, N_FRAMES = 3, 8, 6, 40


def _op():
    dom = st.integers(1, N_DOMS)
    gfns = st.lists(st.integers(0, BASE - 1), min_size=1, max_size=5)
    content = st.integers(0, 3)
    return st.one_of(
        st.tuples(st.just("alloc"), dom, gfns, content),
        st.tuples(st.just("write"), dom, gfns, content),
        st.tuples(st.just("free"), dom, gfns),
        st.tuples(st.just("scrub"), dom, gfns),
        st.tuples(st.just("share"), dom, gfns),
        st.tuples(st.just("lend"), dom, st.integers(1, BONUS)),
        st.tuples(st.just("give_back"), dom, st.integers(1, BONUS)),
        st.tuples(st.just("reclaim"), dom, st.integers(1, 4)),
        st.tuples(st.just("shutdown"), dom),
    )


class World:
    """HostMemory + Repayment, and what every guest should read."""

    def __init__(self):
        self.m = HostMemory(N_FRAMES)
        self.r = Repayment(self.m)
        self.table = HintTable()
        self.alive = set(range(1, N_DOMS + 1))
        self.expect = {}
        self.volatile = {d: set() for d in self.alive}
        for d in self.alive:
            self.m.create_domain(d, BASE + BONUS, populated=BASE)
            for g in range(BASE):
                self.expect[(d, g)] = ZERO_CONTENT
            for g in range(BASE, BASE + BONUS):
                self.expect[(d, g)] = -1

    def reclaim(self, n):
        freed = self.r.reclaim(n)
        for d in list(self.alive):
            for g in self.r.take_lost(d).tolist():
                self.expect[(d, g)] = -1
                self.volatile[d].discard(g)
        return freed

    def write(self, d, gfns, content, zeroing=False):
        gfns = np.array(gfns, np.int64)
        out = self.m.write(
            d, gfns, np.full(gfns.size, content), self.reclaim, zeroing
        )
        # No overcommit: a fault always finds a frame (pool or FIFO).
        assert out.unsatisfied.size == 0
        for g in gfns.tolist():
            self.expect[(d, g)] = content

    def check(self):
        self.m.check()
        assert not self.r.shortfall()
        for d in self.alive:
            got = self.m.read(d, np.arange(BASE + BONUS)).tolist()
            want = [self.expect[(d, g)] for g in range(BASE + BONUS)]
            assert got == want


@settings(max_examples=250, deadline=None)
@given(st.lists(_op(), max_size=40))
def test_repayment_keeps_frames_fifo_and_content(ops):
    w = World()
    for op in ops:
        kind, d = op[0], op[1]
        if d not in w.alive:
            continue
        if kind == "alloc":  # allocation writes a logically zero page
            w.write(d, op[2], op[3], zeroing=True)
        elif kind == "write":
            w.write(d, op[2], op[3])
        elif kind == "free":
            pass  # a freed page keeps its content until it is scrubbed
        elif kind == "scrub":
            w.write(d, op[2], ZERO_CONTENT, zeroing=True)
        elif kind == "share":
            gfns = np.array(op[2], np.int64)
            keys = w.m.read(d, gfns)  # a correct hint: key = content
            w.table.process(
                w.m,
                HintBatch(
                    np.full(gfns.size, d, np.int32),
                    gfns,
                    keys,
                    np.full(gfns.size, DISK, np.int8),
                ),
            )
        elif kind == "lend":
            absent = [
                g for g in range(BASE, BASE + BONUS) if w.expect[(d, g)] == -1
            ][: op[2]]
            got = w.r.lend(d, np.array(absent, np.int64))
            w.m.write(d, got, np.full(got.size, 7))
            w.r.push(d, got)
            for g in got.tolist():
                w.expect[(d, g)] = 7
                w.volatile[d].add(g)
        elif kind == "give_back":
            n = min(op[2], w.r.bonus.get(d, 0))
            for g in w.r.give_back(d, n).tolist():
                w.expect[(d, g)] = -1
                w.volatile[d].discard(g)
        elif kind == "reclaim":
            w.reclaim(op[2])
        elif kind == "shutdown":
            w.m.destroy_domain(d)
            w.r.forget(d)
            w.alive.discard(d)
        w.check()
    event(
        f"frames reclaimed during faults: {w.m.counters.frames_reclaimed > 0}"
    )
    event(f"shares: {w.m.counters.shares > 0}")
