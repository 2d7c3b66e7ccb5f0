"""A content scanner with the semantics of Linux KSM, on a host's memory.

Data structures, after ``mm/ksm.c`` (one numpy entry per slot or frame,
never a Python object per page):

- rmap items, one per slot (a guest page) the scanner has visited:
  ``item`` (none, plain, unstable or stable), ``oldsum`` (the checksum
  seen at the previous visit; 0 for a fresh item, as in the kernel),
  ``head`` (for a stable item, the MFN of its KSM frame) and ``seq`` (the
  full scan in which an unstable item was inserted);
- the stable tree: per frame, ``node_len`` (-1 when the frame is no KSM
  page, else the number of rmap items hanging off it, the kernel's
  rmap_hlist_len), ``node_cid`` (the content it was made with) and
  ``node_stamp`` (its place in its chain: the highest stamp is the head).
  Nodes of equal content are the dups of a chain; a node takes new
  sharers while it has fewer than ``max_page_sharing`` items. The
  contents that have a chain are listed in a sorted array: a chain is
  made when a second node of its content is, and dissolved when a search
  of its content finds one node or none left (the kernel's collapse);
- the unstable tree: sorted arrays of (content, slot) for the pages
  inserted during the current full scan, emptied when a scan starts.

A visit, per page, in scan order (slots in order, domain by domain):

1. a slot with no frame, or mapped to the KSM zero frame, is no anonymous
   page: its rmap item is freed and the page is not counted as scanned;
2. a page mapping a KSM frame hangs its item off that frame's node (a
   frame shared by hints is taken into the stable tree the first time);
3. any other page leaves the tree it was in, and its checksum is taken.
   A checksum that changed since the last visit makes the page volatile:
   it is only recorded. With ``use_zero_pages``, a page whose checksum
   is that of the zero page and whose bytes are zero is merged with the
   zero frame. Otherwise the page joins the fullest stable node of its
   content that has room (the nearest the head of the chain among
   equals, which then moves to the head if it can take one more), else
   merges with the unstable page of its content into a new KSM frame (a
   new dup when the content has full nodes), else is inserted in the
   unstable tree.

Counters have the kernel's meaning: ``pages_shared`` nodes with items,
``pages_sharing`` items beyond the first of each node, ``pages_unshared``
unstable items, ``pages_volatile`` the other items, ``full_scans``,
``stable_node_chains`` and ``stable_node_dups``, ``ksm_zero_pages``.

A visit handles a whole run of pages at once, grouping them by content
and replaying the order within each group. Every page of a run leaves
its old node before any page joins one, which is the kernel's order
except when a page leaves a node of a content that an earlier page of
the run looked for: the run is cut before such a page, so the result is
the kernel's. Stale nodes (their frame freed or rewritten) are removed
when an item pointing to them is visited or when their content is
searched. The kernel also removes stale nodes, and collapses chains,
that it merely passes while walking the red-black tree to another
content; which ones depends on the tree's shape, which is not modelled,
so in the middle of a scan the counters can lag the kernel's until the
content is searched or the node's items visited (by the end of the scan
at the latest, when the node went stale before the scan). For the same
reason, a page rewritten while it sits in the unstable tree is never
found under its new content here, where the kernel finds it when a
search happens to pass it.

Chains are picked from as when ``stable_node_chains_prune_millisecs``
is 0 (every search prunes and takes the fullest dup); with the kernel's
default of 2 s, searches between prunes take the dup at the head of the
chain, which changes which dup fills first, not how many pages merge.
The kernel's smart scan (skipping pages that did not merge for a while)
and its advisor are left out: the scanner behaves as with
``smart_scan = 0`` and a fixed ``pages_to_scan``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dedup.arrays import last_mask, member, unique
from dedup.content import PAGE_SIZE, ZERO_CONTENT
from dedup.frames import COW_DOMAIN
from dedup.hints import SCAN
from dedup.memory import SHARED, HostMemory
from dedup.scan import ScanWork, page_checksum32, tree_depth

NO_ITEM, PLAIN, UNSTABLE, STABLE = 0, 1, 2, 3

ZERO_CHECKSUM = int(page_checksum32(np.array([ZERO_CONTENT]))[0])
"""Checksum of the all-zero page."""


@dataclass(frozen=True)
class KsmParams:
    """KSM's tunables, with the kernel's names and defaults."""

    pages_to_scan: int = 100
    sleep_millisecs: int = 20
    max_page_sharing: int = 256
    use_zero_pages: bool = False

    def __post_init__(self) -> None:
        if self.max_page_sharing < 2:
            raise ValueError(
                f"max_page_sharing must be >= 2, got {self.max_page_sharing}"
            )


# The counters of ``KsmScanner.counters``, as /sys/kernel/mm/ksm names them.
COUNTERS = (
    "pages_shared",
    "pages_sharing",
    "pages_unshared",
    "pages_volatile",
    "full_scans",
    "pages_scanned",
    "stable_node_chains",
    "stable_node_dups",
    "ksm_zero_pages",
)


class KsmScanner:
    """KSM's scan over every guest page of one host."""

    def __init__(self, memory: HostMemory, params: KsmParams) -> None:
        self.memory = memory
        self.params = params
        self.work = ScanWork()
        self.full_scans = 0
        n = memory.frames.n_frames
        # 32-bit where the values allow: a 16 M-frame host keeps about
        # 33 bytes of scanner state per frame and guest page.
        self.node_len = np.full(n, -1, dtype=np.int32)
        self.node_cid = np.zeros(n, dtype=np.int64)
        self.node_stamp = np.zeros(n, dtype=np.int64)
        self._chains = np.empty(0, dtype=np.int64)
        self._stamp = 0
        self.item = np.zeros(0, dtype=np.int8)
        self.oldsum = np.zeros(0, dtype=np.uint32)
        self.head = np.zeros(0, dtype=np.int32)
        self.seq = np.zeros(0, dtype=np.int32)
        self._u_cids = np.empty(0, dtype=np.int64)
        self._u_slots = np.empty(0, dtype=np.int64)
        self._cursor = 0
        self._in_scan = False
        self._zero_mfn = -1

    # Driving the scan ----------------------------------------------------

    def run(self, n_batches: int, batch_pages: int) -> None:
        """Run ``n_batches`` wake-ups of ksmd, each scanning up to
        ``batch_pages`` pages.

        As in the kernel, a batch that reaches the end of a full scan
        stops there, and one that stops exactly at the last page leaves
        the scan to be completed, with no page, by the next batch.
        """
        self._grow()
        total = self.memory.p2m.size
        if total == 0 or batch_pages <= 0:
            return
        remaining = n_batches
        while remaining > 0:
            if not self._in_scan:
                self._start_scan()
            anon = np.flatnonzero(self._anon_mask(self._cursor, total))
            left = anon.size
            fits = left // batch_pages
            if fits >= remaining:
                n = remaining * batch_pages
                end = self._cursor + int(anon[n - 1]) + 1 if n else 0
                if n == left:
                    end = total
                if n:
                    self._visit(self._cursor, end)
                    self._cursor = end
                return
            self._visit(self._cursor, total)
            self._cursor = total
            self._in_scan = False
            self.full_scans += 1
            remaining -= fits + 1

    def full_scan(self) -> None:
        """Finish the current full scan, or do a whole one."""
        self.run(1, self.memory.p2m.size + 1)

    def counters(self) -> dict[str, int]:
        """KSM's counters, with the kernel's meaning."""
        lens = self.node_len[self.node_len >= 1]
        shared = int(lens.size)
        sharing = int(lens.sum()) - shared
        unshared = int(np.count_nonzero(self.item == UNSTABLE))
        items = int(np.count_nonzero(self.item != NO_ITEM))
        alive = self.node_cid[self.node_len >= 0]
        chains = int(self._chains.size)
        dups = int(np.count_nonzero(member(alive, self._chains)))
        return {
            "pages_shared": shared,
            "pages_sharing": sharing,
            "pages_unshared": unshared,
            "pages_volatile": max(0, items - shared - sharing - unshared),
            "full_scans": self.full_scans,
            "pages_scanned": self.work.pages_scanned,
            "stable_node_chains": chains,
            "stable_node_dups": dups,
            "ksm_zero_pages": self._zero_pages(),
        }

    # One run of pages ----------------------------------------------------

    def _visit(self, lo: int, hi: int) -> None:
        """Visit the slots ``lo`` to ``hi`` - 1, in order."""
        m = self.memory
        slots = np.arange(lo, hi, dtype=np.int64)
        anon = self._anon_mask(lo, hi)
        self._drop(slots[~anon])
        slots = slots[anon]
        mfns = m.p2m[slots]
        self.work.pages_scanned += slots.size
        shared = m.frames.owner[mfns] == COW_DOMAIN
        self._attach(slots[shared], mfns[shared])
        slots, mfns = slots[~shared], mfns[~shared]

        # Pages mapping KSM frames are taken before the private pages
        # of the run: the same as the kernel's order unless hints shared
        # frames during the scan (a KSM-only host's merged pages are
        # already on their nodes).
        bounds = [0, *self._cuts(slots, mfns), slots.size]
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            self._visit_private(slots[lo:hi], mfns[lo:hi])

    def _cuts(self, slots: np.ndarray, mfns: np.ndarray) -> list[int]:
        """Where to cut a run of private pages into batches.

        Within a batch every page leaves its node before any page joins
        one. That changes nothing unless a page leaves a live node of
        content X after a steady page of content X came earlier in the
        batch: the kernel would not have given that earlier page the
        room. A batch is cut before each such page.
        """
        leaving = np.flatnonzero(self.item[slots] == STABLE)
        if leaving.size == 0:
            return []
        heads = self.head[slots[leaving]]
        live = self._node_valid(heads)
        leaving, left = leaving[live], self.node_cid[heads[live]]
        cids = self.memory.frames.content[mfns]
        steady = np.flatnonzero(self.oldsum[slots] == page_checksum32(cids))
        if leaving.size == 0 or steady.size == 0:
            return []

        # The last steady page of the leaving page's content before it,
        # searched on one key: content rank, then position in the run.
        n = slots.size + 1
        ukeys = unique(cids[steady])
        rank = np.searchsorted(ukeys, cids[steady])
        key = np.sort(rank * n + steady)
        r = np.minimum(np.searchsorted(ukeys, left), ukeys.size - 1)
        k = np.searchsorted(key, r * n + leaving) - 1
        found = (ukeys[r] == left) & (k >= 0)
        found[found] = key[k[found]] // n == r[found]
        prev = np.where(found, key[np.maximum(k, 0)] % n, -1)

        # Cut in order; a cut moves the start of the batch.
        maybe = prev >= 0
        cuts, start = [], 0
        pairs = zip(leaving[maybe].tolist(), prev[maybe].tolist(), strict=True)
        for pos, last in pairs:
            if last >= start:
                cuts.append(pos)
                start = pos
        return cuts

    def _visit_private(self, slots: np.ndarray, mfns: np.ndarray) -> None:
        """Pages not mapping a KSM frame: leave, checksum, merge."""
        m = self.memory
        self._detach(slots)
        fresh = self.item[slots] == NO_ITEM
        self.item[slots[fresh]] = PLAIN
        self.oldsum[slots[fresh]] = 0
        cids = m.frames.content[mfns]
        sums = page_checksum32(cids)
        self.work.pages_hashed += slots.size
        steady = self.oldsum[slots] == sums
        self.oldsum[slots] = sums
        slots, mfns, cids = slots[steady], mfns[steady], cids[steady]

        if self.params.use_zero_pages:
            maybe = sums[steady] == ZERO_CHECKSUM
            self.work.bytes_compared += int(maybe.sum()) * PAGE_SIZE
            zero = maybe & (cids == ZERO_CONTENT)
            self._merge_zero(mfns[zero])
            slots, mfns, cids = slots[~zero], mfns[~zero], cids[~zero]
        self._merge(slots, mfns, cids)

    def _anon_mask(self, lo: int, hi: int) -> np.ndarray:
        """Which slots hold an anonymous page the scan can visit."""
        mfns = self.memory.p2m[lo:hi]
        anon = mfns >= 0
        if self._zero_mfn >= 0 and self._zero_valid():
            anon &= mfns != self._zero_mfn
        return anon

    def _start_scan(self) -> None:
        """A new full scan starts with an empty unstable tree."""
        self._cursor = 0
        self._in_scan = True
        self._u_cids = np.empty(0, dtype=np.int64)
        self._u_slots = np.empty(0, dtype=np.int64)

    # rmap items ----------------------------------------------------------

    def _grow(self) -> None:
        """Extend the per-slot arrays to every slot of the host."""
        n = self.memory.p2m.size
        extra = n - self.item.size
        if extra <= 0:
            return
        self.item = np.concatenate([self.item, np.zeros(extra, np.int8)])
        self.oldsum = np.concatenate([self.oldsum, np.zeros(extra, np.uint32)])
        self.head = np.concatenate([self.head, np.full(extra, -1, np.int32)])
        self.seq = np.concatenate([self.seq, np.full(extra, -1, np.int32)])

    def _drop(self, slots: np.ndarray) -> None:
        """Free the rmap items of slots that hold no anonymous page."""
        slots = slots[self.item[slots] != NO_ITEM]
        self._detach(slots)
        self.item[slots] = NO_ITEM
        self.oldsum[slots] = 0

    def _detach(self, slots: np.ndarray) -> None:
        """Take items out of the stable or unstable tree: plain again."""
        stable = slots[self.item[slots] == STABLE]
        if stable.size:
            heads = self.head[stable]
            gone = ~self._node_valid(heads)
            self._remove_nodes(unique(heads[gone]))
            live = stable[~gone]
            np.subtract.at(self.node_len, self.head[live], 1)
            self.item[live] = PLAIN
            self.head[live] = -1
        unstable = slots[self.item[slots] == UNSTABLE]
        self.item[unstable] = PLAIN

    def _attach(self, slots: np.ndarray, mfns: np.ndarray) -> None:
        """Hang items of pages mapping KSM frames off those frames."""
        if slots.size == 0:
            return
        f = self.memory.frames
        adopt = unique(mfns[~self._node_valid(mfns)])
        self._remove_nodes(adopt[self.node_len[adopt] >= 0])
        self.node_len[adopt] = 0
        self.node_cid[adopt] = f.content[adopt]
        moved = (self.item[slots] != STABLE) | (self.head[slots] != mfns)
        slots, mfns = slots[moved], mfns[moved]
        self._detach(slots)
        self.item[slots] = STABLE
        self.head[slots] = mfns
        np.add.at(self.node_len, mfns, 1)

    # Stable nodes --------------------------------------------------------

    def _node_valid(self, mfns: np.ndarray) -> np.ndarray:
        """Whether each frame is a live node: a KSM frame still holding
        the content its node was made with."""
        f = self.memory.frames
        return (
            (self.node_len[mfns] >= 0)
            & (f.owner[mfns] == COW_DOMAIN)
            & (f.content[mfns] == self.node_cid[mfns])
        )

    def _remove_nodes(self, mfns: np.ndarray) -> None:
        """Drop stale nodes; their items become plain."""
        if mfns.size == 0:
            return
        gone = np.zeros(self.node_len.size, dtype=bool)
        gone[mfns] = True
        hanging = np.flatnonzero(
            (self.item == STABLE) & gone[np.maximum(self.head, 0)]
        )
        self.item[hanging] = PLAIN
        self.head[hanging] = -1
        self.node_len[mfns] = -1

    def _zero_valid(self) -> bool:
        f = self.memory.frames
        z = self._zero_mfn
        return bool(
            f.owner[z] == COW_DOMAIN
            and f.content[z] == ZERO_CONTENT
            and self.node_len[z] < 0
        )

    def _zero_pages(self) -> int:
        if self._zero_mfn < 0 or not self._zero_valid():
            return 0
        return int(self.memory.frames.count[self._zero_mfn])

    # Merging -------------------------------------------------------------

    def _merge_zero(self, mfns: np.ndarray) -> None:
        """Map zero pages to the zero frame, making one if there is none."""
        if mfns.size == 0:
            return
        m = self.memory
        if self._zero_mfn < 0 or not self._zero_valid():
            # The first zero page becomes the zero frame: write-protected
            # and owned by the cow domain, like the kernel's zero page.
            z = int(mfns[0])
            m.mark_page_ro(mfns[:1])
            m.frames.owner[z] = COW_DOMAIN
            m.frames.source[z] = SCAN
            m.frames.mapper[z] = -1
            self._zero_mfn = z
            self.work.hypercalls += 1
            mfns = mfns[1:]
        if mfns.size:
            sources = np.full(mfns.size, self._zero_mfn, dtype=np.int64)
            self._share(sources, mfns)

    def _merge(
        self, slots: np.ndarray, mfns: np.ndarray, cids: np.ndarray
    ) -> None:
        """Stable tree, then unstable tree, for steady pages in order."""
        n = slots.size
        if n == 0:
            return
        M = self.params.max_page_sharing

        # Group the pages by content, keeping scan order inside a group.
        order = np.argsort(cids, kind="stable")
        g_cids = cids[order]
        start = np.flatnonzero(np.r_[True, g_cids[1:] != g_cids[:-1]])
        size = np.diff(np.r_[start, n])
        group = np.repeat(np.arange(start.size), size)
        rank = np.arange(n) - start[group]
        ucids = g_cids[start]

        # Room in the stable nodes of each content, and its unstable page.
        nodes, room, first_room, n_live = self._stable_room(ucids)
        partner = self._unstable_lookup(ucids)
        n_stable = int(np.count_nonzero(self.node_len >= 0))
        n_unstable = int(self._u_cids.size)

        # Pages beyond the room cycle through unstable, pair, join.
        cap = room[group]
        offset = (partner >= 0).astype(np.int64)[group]
        q = rank - cap + offset
        j = np.where(rank < cap, -1, q % M)
        joins_old = rank < cap
        pairs = j == 1
        joins_new = j >= 2
        tail = j == 0
        # A page left at j == 0 pairs with the next page of its group.
        followed = tail & (rank + 1 < size[group])
        tail &= ~followed

        sorted_slots, sorted_mfns = slots[order], mfns[order]
        src, cli = [], []
        # Joining nodes that had room.
        at = np.flatnonzero(joins_old)
        target = nodes[
            np.searchsorted(
                np.cumsum(self._node_room(nodes)),
                first_room[group[at]] + rank[at],
                side="right",
            )
        ]
        src.append(target)
        cli.append(sorted_mfns[at])
        self._restamp(nodes, target)
        # Pairs: this page becomes a new KSM frame with its partner.
        at_pair = np.flatnonzero(pairs)
        from_tree = (q[at_pair] == 1) & (offset[at_pair] == 1)
        mate = np.where(from_tree, -1, at_pair - 1)
        mate_slots = np.where(
            from_tree, partner[group[at_pair]], sorted_slots[mate]
        )
        src.append(sorted_mfns[at_pair])
        cli.append(self.memory.p2m[mate_slots])
        # Joining a node made in this run.
        at_new = np.flatnonzero(joins_new)
        maker = at_new - (j[at_new] - 1)
        src.append(sorted_mfns[maker])
        cli.append(sorted_mfns[at_new])

        sources, clients = np.concatenate(src), np.concatenate(cli)
        made = sorted_mfns[at_pair]
        self._remove_nodes(made[self.node_len[made] >= 0])
        self._share(sources, clients)

        # The trees after the merges.
        self._stable_append(sorted_slots[at], target)
        self._stable_append(sorted_slots[at_pair], made)
        self.item[mate_slots] = PLAIN
        self._stable_append(mate_slots, made)
        self._stable_append(sorted_slots[at_new], sorted_mfns[maker])
        self.node_cid[made] = g_cids[at_pair]
        self._new_stamps(made)
        n_made = np.bincount(group[at_pair], minlength=ucids.size)
        chained = (n_made > 0) & (n_live + n_made >= 2)
        self._chains = unique(np.concatenate([self._chains, ucids[chained]]))
        self._unstable_insert(sorted_slots[tail], g_cids[tail])

        self.work.lookups += n * tree_depth(n_stable)
        self.work.lookups += int(np.count_nonzero(~joins_old)) * tree_depth(
            n_unstable
        )
        self.work.bytes_compared += PAGE_SIZE * int(sources.size)

    def _stable_room(
        self, ucids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Live nodes of the given contents that can take sharers.

        Returns those nodes sorted by content, the room per content,
        where each content's room starts in the running sum of the
        nodes' room, and the live nodes per content. Stale nodes of these
        contents are removed on the way, as the kernel does when its
        search meets them, and a chain left with one node or none is
        dissolved, as the kernel collapses it.
        """
        alive = np.flatnonzero(self.node_len >= 0)
        alive = alive[member(self.node_cid[alive], ucids)]
        valid = self._node_valid(alive)
        self._remove_nodes(alive[~valid])
        alive = alive[valid]
        live = np.sort(self.node_cid[alive])
        n_live = np.searchsorted(live, ucids, side="right") - np.searchsorted(
            live, ucids, side="left"
        )
        self._chains = self._chains[~member(self._chains, ucids[n_live <= 1])]
        nodes = alive[self._node_room(alive) > 0]
        # Within a content, the fullest node first: the dup the kernel
        # picks when it prunes a chain at each search.
        nodes = nodes[
            np.lexsort(
                (
                    -self.node_stamp[nodes],
                    -self.node_len[nodes],
                    self.node_cid[nodes],
                )
            )
        ]
        room_each = self._node_room(nodes)
        lo = np.searchsorted(self.node_cid[nodes], ucids, side="left")
        hi = np.searchsorted(self.node_cid[nodes], ucids, side="right")
        running = np.r_[0, np.cumsum(room_each)]
        return nodes, running[hi] - running[lo], running[lo], n_live

    def _new_stamps(self, mfns: np.ndarray) -> None:
        """Put new nodes at the head of their chain, in order."""
        self.node_stamp[mfns] = self._stamp + np.arange(mfns.size)
        self._stamp += int(mfns.size)

    def _restamp(self, nodes: np.ndarray, target: np.ndarray) -> None:
        """Move the nodes that took sharers to the head of their chain.

        The kernel moves the dup it picks to the head of the chain when
        it can take one more sharer after this one; a node filled by
        several pages of a run moves at its first. Nodes are filled in
        the order of ``nodes``, which is the order they move in.
        """
        if target.size == 0:
            return
        used = np.zeros(self.node_len.size, dtype=bool)
        used[target] = True
        moved = nodes[used[nodes]]
        # Room before this run's joins, counted on ``node_len`` that
        # does not include them yet.
        moved = moved[self.node_len[moved] + 1 < self.params.max_page_sharing]
        self._new_stamps(moved)

    def _node_room(self, mfns: np.ndarray) -> np.ndarray:
        """How many more sharers each node takes (0 for an empty node)."""
        lens = self.node_len[mfns]
        room = self.params.max_page_sharing - lens
        return np.where((lens > 0) & (room > 0), room, 0)

    def _stable_append(self, slots: np.ndarray, mfns: np.ndarray) -> None:
        self.item[slots] = STABLE
        self.head[slots] = mfns
        new = self.node_len[mfns] < 0
        self.node_len[mfns[new]] = 0
        np.add.at(self.node_len, mfns, 1)

    def _unstable_lookup(self, ucids: np.ndarray) -> np.ndarray:
        """The unstable page of each content in this scan, or -1.

        The kernel's unstable tree is not write-protected: a page whose
        content changed since it was inserted is not found under it.
        """
        out = np.full(ucids.size, -1, dtype=np.int64)
        if self._u_cids.size == 0:
            return out
        pos = np.searchsorted(self._u_cids, ucids)
        pos = np.minimum(pos, self._u_cids.size - 1)
        hit = self._u_cids[pos] == ucids
        slots = self._u_slots[pos[hit]]
        f, p2m = self.memory.frames, self.memory.p2m
        mfns = p2m[slots]
        ok = (
            (self.item[slots] == UNSTABLE)
            & (self.seq[slots] == self.full_scans)
            & (mfns >= 0)
        )
        ok[ok] &= (f.owner[mfns[ok]] >= 0) & (
            f.content[mfns[ok]] == ucids[hit][ok]
        )
        out[np.flatnonzero(hit)[ok]] = slots[ok]
        return out

    def _unstable_insert(self, slots: np.ndarray, cids: np.ndarray) -> None:
        self.item[slots] = UNSTABLE
        self.seq[slots] = self.full_scans
        all_cids = np.concatenate([self._u_cids, cids])
        all_slots = np.concatenate([self._u_slots, slots])
        order = np.argsort(all_cids, kind="stable")
        all_cids, all_slots = all_cids[order], all_slots[order]
        keep = last_mask(all_cids)
        self._u_cids, self._u_slots = all_cids[keep], all_slots[keep]

    def _share(self, sources: np.ndarray, clients: np.ndarray) -> None:
        """Mark and share page pairs; every pair was verified equal."""
        if sources.size == 0:
            return
        m = self.memory
        m.mark_page_ro(unique(np.concatenate([sources, clients])))
        codes = m.share_mfns(sources, clients, SCAN)
        self.work.hypercalls += 2
        self.work.share_ops += int(sources.size)
        if np.any(codes != SHARED):
            raise AssertionError("KSM merged a pair the hypervisor refused")
