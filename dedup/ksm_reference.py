"""A page-by-page KSM scanner: the reference for ``dedup.ksm``.

It follows ``cmp_and_merge_page`` of Linux's ``mm/ksm.c`` one page at a
time, with Python dicts for the rmap items and the two trees, on the same
``HostMemory`` as the vectorised scanner, so that both can be run on the
same contents and compared counter by counter. It is slow (a Python loop
per page): tests check the vectorised scanner and the kernel against it,
and ``cowsim bench`` measures how much faster the vectorised one is.

Stable nodes are keyed by the MFN of their KSM frame; a node is stale
when its frame left the cow domain or changed content. Stale nodes are
removed when an item hanging off them is visited or when their content
is searched, as in the vectorised scanner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dedup.content import ZERO_CONTENT
from dedup.frames import COW_DOMAIN
from dedup.hints import SCAN
from dedup.ksm import KsmParams
from dedup.memory import SHARED, HostMemory
from dedup.scan import page_checksum32

PLAIN, UNSTABLE, STABLE = "plain", "unstable", "stable"
ZERO_SUM = int(page_checksum32(np.array([ZERO_CONTENT]))[0])


@dataclass
class Item:
    """An rmap item."""

    kind: str = PLAIN
    oldsum: int = 0
    head: int = -1
    seq: int = -1
    key: int = -1


class ReferenceKsm:
    """KSM's scan, one page at a time."""

    def __init__(self, memory: HostMemory, params: KsmParams) -> None:
        self.m = memory
        self.params = params
        self.items: dict[int, Item] = {}
        self.nodes: dict[int, list[int]] = {}  # mfn -> slots hanging
        self.node_cid: dict[int, int] = {}
        self.by_cid: dict[int, set[int]] = {}  # content -> node MFNs
        # Chain order: the highest stamp is the head of the chain's list.
        self.stamp: dict[int, int] = {}
        self.clock = 0
        self.chains: set[int] = set()
        self.unstable: dict[int, int] = {}  # content -> slot
        self.full_scans = 0
        self.pages_scanned = 0
        self.zero_mfn = -1

    def full_scan(self) -> None:
        """One full scan over every slot."""
        self.unstable = {}
        # No page is written during a scan: checksum every page up front.
        mapped = np.maximum(self.m.p2m, 0)
        self._sums = page_checksum32(self.m.frames.content[mapped]).tolist()
        for slot in range(self.m.p2m.size):
            if self._anon(slot):
                self._visit(slot)
            elif slot in self.items:
                self._leave(slot)
                del self.items[slot]
        self.full_scans += 1

    def counters(self) -> dict[str, int]:
        """KSM's counters."""
        lens = [len(v) for v in self.nodes.values() if v]
        shared, sharing = len(lens), sum(lens) - len(lens)
        unshared = sum(i.kind == UNSTABLE for i in self.items.values())
        dups = sum(c in self.chains for c in self.node_cid.values())
        zero = 0
        if self.zero_mfn >= 0 and self._zero_valid():
            zero = int(self.m.frames.count[self.zero_mfn])
        return {
            "pages_shared": shared,
            "pages_sharing": sharing,
            "pages_unshared": unshared,
            "pages_volatile": len(self.items) - shared - sharing - unshared,
            "full_scans": self.full_scans,
            "pages_scanned": self.pages_scanned,
            "stable_node_chains": len(self.chains),
            "stable_node_dups": dups,
            "ksm_zero_pages": zero,
        }

    # One page ------------------------------------------------------------

    def _anon(self, slot: int) -> bool:
        mfn = int(self.m.p2m[slot])
        if mfn < 0:
            return False
        return not (mfn == self.zero_mfn and self._zero_valid())

    def _visit(self, slot: int) -> None:
        f = self.m.frames
        mfn = int(self.m.p2m[slot])
        item = self.items.setdefault(slot, Item())
        self.pages_scanned += 1
        if f.owner[mfn] == COW_DOMAIN:
            if item.kind == STABLE and item.head == mfn:
                return
            if not self._valid(mfn):
                self._remove_node(mfn)
                self._new_node(mfn, int(f.content[mfn]))
            self._leave(slot)
            self._append(slot, mfn)
            return

        self._leave(slot)
        cid = int(f.content[mfn])
        checksum = self._sums[slot]
        if item.oldsum != checksum:
            item.oldsum = checksum
            return
        if self.params.use_zero_pages and checksum == ZERO_SUM:
            if cid == ZERO_CONTENT:
                self._merge_zero(mfn)
                return
        node = self._stable_search(cid)
        if node >= 0:
            self._share(node, mfn)
            self._append(slot, node)
            return
        partner = self.unstable.get(cid, -1)
        if partner >= 0 and self._unstable_ok(partner, cid):
            del self.unstable[cid]
            mate = int(self.m.p2m[partner])
            if self.by_cid.get(cid):
                self.chains.add(cid)
            self._remove_node(mfn)
            self._share(mfn, mate)
            self._new_node(mfn, cid)
            self.items[partner].kind = PLAIN
            self._append(partner, mfn)
            self._append(slot, mfn)
            return
        item.kind = UNSTABLE
        item.seq = self.full_scans
        item.key = cid
        self.unstable[cid] = slot

    # Trees ---------------------------------------------------------------

    def _valid(self, mfn: int) -> bool:
        f = self.m.frames
        return (
            mfn in self.nodes
            and f.owner[mfn] == COW_DOMAIN
            and f.content[mfn] == self.node_cid[mfn]
        )

    def _leave(self, slot: int) -> None:
        item = self.items.get(slot)
        if item is None:
            return
        if item.kind == STABLE:
            if self._valid(item.head):
                self.nodes[item.head].remove(slot)
            else:
                self._remove_node(item.head)
        if item.kind == UNSTABLE and self.unstable.get(item.key) == slot:
            del self.unstable[item.key]
        item.kind, item.head = PLAIN, -1

    def _new_node(self, mfn: int, cid: int) -> None:
        self.nodes[mfn] = []
        self.node_cid[mfn] = cid
        self.by_cid.setdefault(cid, set()).add(mfn)
        self._to_head(mfn)

    def _remove_node(self, mfn: int) -> None:
        for slot in self.nodes.pop(mfn, []):
            self.items[slot].kind = PLAIN
            self.items[slot].head = -1
        cid = self.node_cid.pop(mfn, None)
        if cid is not None:
            self.by_cid[cid].discard(mfn)

    def _append(self, slot: int, mfn: int) -> None:
        item = self.items[slot]
        item.kind, item.head = STABLE, mfn
        self.nodes[mfn].append(slot)

    def _stable_search(self, cid: int) -> int:
        """The fullest node of this content with room (the one nearest
        the head of the chain among equals), removing stale ones."""
        found, best = -1, 0
        mine = self.by_cid.get(cid, set())
        for mfn in sorted(mine, key=lambda m: -self.stamp[m]):
            if not self._valid(mfn):
                self._remove_node(mfn)
                continue
            n = len(self.nodes[mfn])
            if best < n < self.params.max_page_sharing:
                found, best = mfn, n
        if len(self.by_cid.get(cid, ())) <= 1:
            self.chains.discard(cid)
        if found >= 0 and best + 1 < self.params.max_page_sharing:
            self._to_head(found)
        return found

    def _to_head(self, mfn: int) -> None:
        self.stamp[mfn] = self.clock
        self.clock += 1

    def _unstable_ok(self, slot: int, cid: int) -> bool:
        item = self.items.get(slot)
        mfn = int(self.m.p2m[slot])
        return (
            item is not None
            and item.kind == UNSTABLE
            and item.seq == self.full_scans
            and mfn >= 0
            and self.m.frames.owner[mfn] >= 0
            and self.m.frames.content[mfn] == cid
        )

    # Merging -------------------------------------------------------------

    def _zero_valid(self) -> bool:
        f = self.m.frames
        z = self.zero_mfn
        return bool(
            f.owner[z] == COW_DOMAIN
            and f.content[z] == ZERO_CONTENT
            and z not in self.nodes
        )

    def _merge_zero(self, mfn: int) -> None:
        if self.zero_mfn < 0 or not self._zero_valid():
            self.m.mark_page_ro(np.array([mfn]))
            f = self.m.frames
            f.owner[mfn] = COW_DOMAIN
            f.source[mfn] = SCAN
            f.mapper[mfn] = -1
            self.zero_mfn = mfn
            return
        self._share(self.zero_mfn, mfn)

    def _share(self, source: int, client: int) -> None:
        pair = np.array([source, client])
        self.m.mark_page_ro(pair)
        code = self.m.share_mfns(pair[:1], pair[1:], SCAN)
        assert code[0] == SHARED
