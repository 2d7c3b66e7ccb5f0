"""A host's memory: p2m maps, reverse maps, sharing hypercalls, CoW faults.

Data structures:

- the frame table (``dedup.frames``), one entry per MFN;
- one flat array ``p2m`` of *slots*: every domain gets a contiguous range
  of slots, one per GFN, holding the MFN that backs it (-1 when the GFN
  is not populated, as after a balloon-out). ``slot_dom`` says which
  domain a slot belongs to;
- the reverse map: Xen keeps, per shared frame, the list of (domain, GFN)
  pairs that map it. Here each frame keeps its mapping count and one known
  mapper slot, which is exact for a private frame; the full list of a
  frame is recovered by scanning ``p2m``. The scan is only needed when a
  frame that is itself shared is merged into another, which the CoW daemon
  avoids by always keeping the frame with most mappings. This trades a
  rare O(guest pages) scan for not maintaining a linked list on every
  fault.

Every operation works on batches of pages with numpy. The rules are those
of Xen's memory CoW: ``mark_page_ro`` nominates frames; ``share_mfns``
merges a client frame into a source frame and frees the client, refusing
any pair that is not write-protected, was written since it was marked, or
whose contents differ; a write to a write-protected frame faults, and the
fault either makes the frame private again (last mapping), takes a free
frame without copying (logically zero content), or takes a free frame and
copies. When no frame can be found the write is left undone and reported
unsatisfied, so the caller can pause the guest.

Not modelled: page tables themselves, grant mappings, superpages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dedup.arrays import first_index, last_mask, unique
from dedup.content import PAGE_SIZE, ZERO_CONTENT
from dedup.errors import ShareError
from dedup.frames import (
    COW_DOMAIN,
    FREE,
    NO_SOURCE,
    NOT_MARKED,
    FrameTable,
)

# Result codes of share_mfns, one per pair.
SHARED = 0
SAME_FRAME = 1
NOT_ALLOCATED = 2
NOT_READ_ONLY = 3
WRITTEN_SINCE_MARK = 4
CONTENT_DIFFERS = 5
SHARE_RESULTS = (
    "shared",
    "same frame",
    "not allocated",
    "not read-only",
    "written since marked",
    "content differs",
)

Reclaimer = Callable[[int], int]


@dataclass
class MemoryCounters:
    """Running totals of one host's sharing and fault activity."""

    shares: int = 0
    share_refusals: int = 0
    faults_last: int = 0
    faults_nocopy: int = 0
    faults_copy: int = 0
    faults_unsatisfied: int = 0
    bytes_copied: int = 0
    frames_reclaimed: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return dict(self.__dict__)


@dataclass
class WriteOutcome:
    """What one batch of writes did; ``unsatisfied`` GFNs were not written."""

    faults_last: int = 0
    faults_nocopy: int = 0
    faults_copy: int = 0
    unsatisfied: np.ndarray = field(
        default_factory=lambda: np.empty(0, dtype=np.int64)
    )


class HostMemory:
    """Machine frames of one host and the p2m maps of its domains."""

    def __init__(self, n_frames: int) -> None:
        self.frames = FrameTable(n_frames)
        self.p2m = np.empty(0, dtype=np.int64)
        self.slot_dom = np.empty(0, dtype=np.int32)
        self._ranges: dict[int, tuple[int, int]] = {}
        self.counters = MemoryCounters()

    # Domains -------------------------------------------------------------

    def create_domain(
        self, domid: int, n_pages: int, populated: int | None = None
    ) -> None:
        """Give ``domid`` ``n_pages`` GFNs; the first ``populated`` of them
        (all by default) are backed by zero frames, the rest are empty,
        ready to be populated later (as bonus pages are)."""
        populated = n_pages if populated is None else populated
        if domid in self._ranges or domid < 0:
            raise ValueError(f"domain id {domid} is in use or invalid")
        if populated > self.frames.free_frames:
            raise MemoryError(
                f"domain {domid} needs {populated} frames, "
                f"{self.frames.free_frames} free"
            )
        base = self.p2m.size
        self._ranges[domid] = (base, n_pages)
        mfns = self.frames.allocate(populated, domid)
        slots = np.arange(base, base + populated, dtype=np.int64)
        empty = np.full(n_pages - populated, -1, dtype=np.int64)
        self.p2m = np.concatenate([self.p2m, mfns, empty])
        self.slot_dom = np.concatenate(
            [self.slot_dom, np.full(n_pages, domid, dtype=np.int32)]
        )
        self.frames.count[mfns] = 1
        self.frames.mapper[mfns] = slots

    def destroy_domain(self, domid: int) -> int:
        """Drop every mapping of ``domid``; return the frames freed."""
        base, n = self._ranges.pop(domid)
        slots = np.arange(base, base + n, dtype=np.int64)
        freed = self._unmap_slots(slots)
        self.slot_dom[base : base + n] = -1
        return freed

    def domains(self) -> list[int]:
        """Ids of the domains that have memory here."""
        return list(self._ranges)

    def domain_pages(self, domid: int) -> int:
        """How many GFNs ``domid`` has."""
        return self._ranges[domid][1]

    def slots(self, domid: int, gfns: np.ndarray) -> np.ndarray:
        """Slots of ``domid``'s GFNs; raises IndexError when out of range."""
        base, n = self._ranges[domid]
        gfns = np.asarray(gfns, dtype=np.int64)
        if gfns.size and (gfns.min() < 0 or gfns.max() >= n):
            raise IndexError(f"GFN out of range for domain {domid}")
        return base + gfns

    def slots_of(self, domids: np.ndarray, gfns: np.ndarray) -> np.ndarray:
        """Slots of (domain, GFN) pairs, -1 where the domain is gone;
        raises IndexError when a live domain's GFN is out of range."""
        domids = np.asarray(domids, dtype=np.int64)
        gfns = np.asarray(gfns, dtype=np.int64)
        if domids.size == 0:
            return np.empty(0, dtype=np.int64)
        if domids.min() < 0:
            raise IndexError("negative domain id")
        # Domain ids are small: a table indexed by id replaces a search.
        top = int(domids.max()) + 1
        base = np.full(top, -1, dtype=np.int64)
        size = np.zeros(top, dtype=np.int64)
        for domid, (first, n) in self._ranges.items():
            if domid < top:
                base[domid], size[domid] = first, n
        first = base[domids]
        live = first >= 0
        if np.any(live & ((gfns < 0) | (gfns >= size[domids]))):
            raise IndexError("GFN out of range for its domain")
        return np.where(live, first + gfns, -1)

    def domain_p2m(self, domid: int) -> np.ndarray:
        """A read-only view of ``domid``'s GFN -> MFN map."""
        base, n = self._ranges[domid]
        view = self.p2m[base : base + n]
        view.flags.writeable = False
        return view

    # Guest access --------------------------------------------------------

    def read(self, domid: int, gfns: np.ndarray) -> np.ndarray:
        """Content ids the guest reads at ``gfns`` (-1 where unpopulated)."""
        mfns = self.p2m[self.slots(domid, gfns)]
        out = np.full(mfns.size, -1, dtype=np.int64)
        present = mfns >= 0
        out[present] = self.frames.content[mfns[present]]
        return out

    def populate(self, domid: int, gfns: np.ndarray) -> np.ndarray:
        """Back unpopulated GFNs with zero frames; return those left out."""
        slots = self.slots(domid, gfns)
        slots = unique(slots[self.p2m[slots] < 0])
        mfns = self.frames.allocate(slots.size, domid)
        done = slots[: mfns.size]
        self.p2m[done] = mfns
        self.frames.count[mfns] = 1
        self.frames.mapper[mfns] = done
        base = self._ranges[domid][0]
        return slots[mfns.size :] - base

    def balloon_out(self, domid: int, gfns: np.ndarray) -> int:
        """Unpopulate GFNs (their content is lost); return frames freed."""
        slots = self.slots(domid, gfns)
        return self._unmap_slots(unique(slots))

    def write(
        self,
        domid: int,
        gfns: np.ndarray,
        contents: np.ndarray,
        reclaim: Reclaimer | None = None,
        zeroing: bool = False,
    ) -> WriteOutcome:
        """Write new contents at ``gfns``, serving copy-on-write faults.

        When the free pool is short, ``reclaim(n)`` is asked to free ``n``
        frames (for example from a repayment FIFO) and returns how many it
        freed. Writes that still find no frame are left undone and their
        GFNs returned in ``unsatisfied``; nothing is silently dropped.
        Within one batch the last write to a GFN wins. ``zeroing`` says the
        guest declared these pages logically zero (it is allocating or
        scrubbing them), so a fault needs no copy whatever the frame held.
        """
        gfns = np.asarray(gfns, dtype=np.int64)
        contents = np.asarray(contents, dtype=np.int64)
        gfns, contents = _last_write_wins(gfns, contents)
        slots = self.slots(domid, gfns)
        if np.any(self.p2m[slots] < 0):
            raise ValueError(f"domain {domid} wrote an unpopulated GFN")
        c = self.counters
        before = (c.faults_last, c.faults_nocopy, c.faults_copy)
        mfns = self.p2m[slots]
        faulting = self.frames.ro[mfns]
        done = ~faulting
        if faulting.any():
            served = self._fault(domid, slots[faulting], reclaim, zeroing)
            done[np.flatnonzero(faulting)[served]] = True
            mfns = self.p2m[slots]
        self.frames.content[mfns[done]] = contents[done]
        return WriteOutcome(
            faults_last=c.faults_last - before[0],
            faults_nocopy=c.faults_nocopy - before[1],
            faults_copy=c.faults_copy - before[2],
            unsatisfied=gfns[~done],
        )

    # Hypercalls ----------------------------------------------------------

    def mark_page_ro(self, mfns: np.ndarray) -> None:
        """Write-protect frames and record their content as nominated."""
        mfns = np.asarray(mfns, dtype=np.int64)
        if np.any(self.frames.owner[mfns] == FREE):
            raise ShareError("mark_page_ro: a frame is not allocated")
        self.frames.ro[mfns] = True
        self.frames.marked[mfns] = self.frames.content[mfns]

    def share_mfns(
        self,
        sources: np.ndarray,
        clients: np.ndarray,
        source_kind: int | np.ndarray,
    ) -> np.ndarray:
        """Merge each client frame into its source frame.

        Every GFN mapping the client is remapped to the source, the source
        passes to the cow domain and the client returns to the free pool.
        Returns one result code per pair (``SHARED`` or the reason it was
        refused); a refused pair changes nothing. ``source_kind`` (one
        value, or one per pair) records which hint source found it.
        """
        sources = np.asarray(sources, dtype=np.int64).copy()
        clients = np.asarray(clients, dtype=np.int64).copy()
        kinds = np.broadcast_to(
            np.asarray(source_kind, dtype=np.int8), sources.shape
        )
        result = self._validate(sources, clients)
        pending = np.flatnonzero(result == SHARED)
        forward: dict[int, int] = {}
        while pending.size:
            if forward:
                # Frames merged away in an earlier round live on in their
                # source: follow them, then check the pair again.
                _follow(sources, pending, forward)
                _follow(clients, pending, forward)
                result[pending] = self._validate(
                    sources[pending], clients[pending]
                )
                pending = pending[result[pending] == SHARED]
                if not pending.size:
                    break
            round_ = _independent(sources[pending], clients[pending])
            chosen = pending[round_]
            self._merge(sources[chosen], clients[chosen], kinds[chosen])
            pending = pending[~round_]
            if pending.size:
                forward.update(
                    zip(
                        clients[chosen].tolist(),
                        sources[chosen].tolist(),
                        strict=True,
                    )
                )
        refused = int(np.count_nonzero(result > SAME_FRAME))
        self.counters.shares += int(np.count_nonzero(result == SHARED))
        self.counters.share_refusals += refused
        return result

    def share_mfn(self, source: int, client: int, source_kind: int) -> None:
        """Share one pair; raise ShareError naming the reason on refusal."""
        code = int(
            self.share_mfns(
                np.array([source]), np.array([client]), source_kind
            )[0]
        )
        if code not in (SHARED, SAME_FRAME):
            raise ShareError(
                f"share_mfns({source}, {client}): {SHARE_RESULTS[code]}"
            )

    def mappers(self, mfn: int) -> list[tuple[int, int]]:
        """The reverse map of a frame: its (domain, GFN) pairs."""
        slots = np.flatnonzero(self.p2m == mfn)
        return [self._slot_to_gfn(int(s)) for s in slots]

    # Accounting ----------------------------------------------------------

    def sharing(self) -> dict[str, int]:
        """Shared frames and the mappings beyond the first that use them.

        ``shared_frames`` and ``sharing_mappings`` have the meaning Linux
        KSM gives ``pages_shared`` and ``pages_sharing``: the second is
        the number of frames saved.
        """
        shared = self.frames.shared_mask()
        counts = self.frames.count[shared]
        n_shared = int(np.count_nonzero(counts >= 2))
        return {
            "shared_frames": n_shared,
            "sharing_mappings": int(counts.sum()) - int(counts.size),
        }

    def saved_by_source(self, n_sources: int) -> np.ndarray:
        """Frames saved, split by the hint source that found the sharing."""
        shared = self.frames.shared_mask()
        kinds = self.frames.source[shared].astype(np.int64)
        saved = (self.frames.count[shared] - 1).astype(np.float64)
        return np.bincount(kinds, weights=saved, minlength=n_sources)[
            :n_sources
        ].astype(np.int64)

    def guest_pages(self) -> int:
        """GFNs currently backed by a frame, over all domains."""
        return int(np.count_nonzero(self.p2m >= 0))

    def frames_in_use(self) -> int:
        """Frames that back at least one GFN."""
        return self.frames.n_frames - self.frames.free_frames

    def distinct_contents(self) -> int:
        """Distinct contents over every populated GFN of every domain.

        A perfect deduplicator would need exactly this many frames, so
        ``guest_pages() - distinct_contents()`` is the sharing potential.
        """
        mapped = self.p2m[self.p2m >= 0]
        if mapped.size == 0:
            return 0
        values = np.sort(self.frames.content[mapped])
        return int(np.count_nonzero(values[1:] != values[:-1])) + 1

    def check(self) -> None:
        """Raise AssertionError unless frames and maps are consistent."""
        self.frames.check()
        mapped = self.p2m[self.p2m >= 0]
        counts = np.bincount(mapped, minlength=self.frames.n_frames)
        assert np.array_equal(counts, self.frames.count), "rmap != p2m"
        known = self.frames.mapper >= 0
        mapper = self.frames.mapper[known]
        assert np.all(self.p2m[mapper] == np.flatnonzero(known)), (
            "stale mapper slot"
        )

    # Internals -----------------------------------------------------------

    def _slot_to_gfn(self, slot: int) -> tuple[int, int]:
        domid = int(self.slot_dom[slot])
        return domid, slot - self._ranges[domid][0]

    def _validate(
        self, sources: np.ndarray, clients: np.ndarray
    ) -> np.ndarray:
        f = self.frames
        result = np.full(sources.size, SHARED, dtype=np.int8)
        checks = (
            (CONTENT_DIFFERS, f.content[sources] != f.content[clients]),
            (
                WRITTEN_SINCE_MARK,
                (f.marked[sources] != f.content[sources])
                | (f.marked[clients] != f.content[clients]),
            ),
            (NOT_READ_ONLY, ~(f.ro[sources] & f.ro[clients])),
            (
                NOT_ALLOCATED,
                (f.owner[sources] == FREE) | (f.owner[clients] == FREE),
            ),
            (SAME_FRAME, sources == clients),
        )
        # Later checks overwrite earlier ones: the most basic reason wins.
        for code, failed in checks:
            result[failed] = code
        return result

    def _merge(
        self, sources: np.ndarray, clients: np.ndarray, kinds: np.ndarray
    ) -> None:
        """Remap every mapping of each client to its source; free clients."""
        f = self.frames
        slots, pairs = self._client_slots(clients)
        self.p2m[slots] = sources[pairs]
        np.add.at(f.count, sources, f.count[clients])
        fresh = f.owner[sources] != COW_DOMAIN
        f.owner[sources] = COW_DOMAIN
        f.source[sources[fresh]] = kinds[fresh]
        f.count[clients] = 0
        f.give_back(clients)

    def _client_slots(
        self, clients: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Slots mapping the clients (distinct frames), and the index in
        ``clients`` of the frame each slot maps.

        A frame with one mapping knows its slot; only frames mapped more
        than once (already shared) need a scan of the p2m maps.
        """
        f = self.frames
        single = (f.count[clients] == 1) & (f.mapper[clients] >= 0)
        first = np.flatnonzero(single)
        slots, pairs = [f.mapper[clients[first]]], [first]
        rest = np.flatnonzero(~single)
        if rest.size:
            order = rest[np.argsort(clients[rest])]
            found = np.flatnonzero(np.isin(self.p2m, clients[order]))
            where = np.searchsorted(clients[order], self.p2m[found])
            slots.append(found)
            pairs.append(order[where])
        return np.concatenate(slots), np.concatenate(pairs)

    def _fault(
        self,
        domid: int,
        slots: np.ndarray,
        reclaim: Reclaimer | None,
        zeroing: bool,
    ) -> np.ndarray:
        """Serve write faults on ``slots``; return which were served."""
        f = self.frames
        mfns = self.p2m[slots]
        served = np.zeros(slots.size, dtype=bool)

        # Every writer but the last of each frame takes a frame of its own.
        last = last_mask(mfns)
        others = np.flatnonzero(~last)
        served[others] = self._copy_out(domid, slots[others], reclaim, zeroing)

        # A last writer that is now the frame's only mapping keeps it: the
        # frame becomes private again with no copy. Otherwise it copies too.
        lasts = np.flatnonzero(last)
        alone = f.count[mfns[lasts]] == 1
        keep_at = lasts[alone]
        keep = mfns[keep_at]
        f.owner[keep] = domid
        f.ro[keep] = False
        f.marked[keep] = NOT_MARKED
        f.source[keep] = NO_SOURCE
        f.mapper[keep] = slots[keep_at]
        served[keep_at] = True
        self.counters.faults_last += keep.size
        rest = lasts[~alone]
        served[rest] = self._copy_out(domid, slots[rest], reclaim, zeroing)

        return served

    def _copy_out(
        self,
        domid: int,
        slots: np.ndarray,
        reclaim: Reclaimer | None,
        zeroing: bool,
    ) -> np.ndarray:
        """Give each slot a private copy of its frame; mask of those served.

        A logically zero frame needs no copy: the new frame is already
        zero. Slots that find no frame keep their mapping and stay unserved.
        """
        f = self.frames
        served = np.zeros(slots.size, dtype=bool)
        fresh = self._take_frames(slots.size, reclaim)
        got = slots[: fresh.size]
        old = self.p2m[got]
        f.owner[fresh] = domid
        f.count[fresh] = 1
        f.content[fresh] = f.content[old]
        f.mapper[fresh] = got
        np.subtract.at(f.count, old, 1)
        stale = f.mapper[old] == got
        f.mapper[old[stale]] = -1
        self.p2m[got] = fresh
        served[: fresh.size] = True

        c = self.counters
        n_copy = (
            0
            if zeroing
            else int(np.count_nonzero(f.content[old] != ZERO_CONTENT))
        )
        c.faults_copy += n_copy
        c.faults_nocopy += fresh.size - n_copy
        c.bytes_copied += n_copy * PAGE_SIZE
        c.faults_unsatisfied += slots.size - fresh.size
        return served

    def _take_frames(self, n: int, reclaim: Reclaimer | None) -> np.ndarray:
        short = n - self.frames.free_frames
        if short > 0 and reclaim is not None:
            self.counters.frames_reclaimed += reclaim(short)
        return self.frames.take(n)

    def _unmap_slots(self, slots: np.ndarray) -> int:
        f = self.frames
        slots = slots[self.p2m[slots] >= 0]
        mfns = self.p2m[slots]
        np.subtract.at(f.count, mfns, 1)
        stale = f.mapper[mfns] == slots
        f.mapper[mfns[stale]] = -1
        self.p2m[slots] = -1
        return self._free_unmapped(mfns)

    def _free_unmapped(self, mfns: np.ndarray) -> int:
        """Return frames left with no mapping to the free pool."""
        orphans = unique(mfns[self.frames.count[mfns] == 0])
        self.frames.give_back(orphans)
        return int(orphans.size)


def _last_write_wins(
    gfns: np.ndarray, contents: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    if gfns.size < 2:
        return gfns, contents
    keep = np.flatnonzero(last_mask(gfns))
    return gfns[keep], contents[keep]


def _independent(sources: np.ndarray, clients: np.ndarray) -> np.ndarray:
    """Pairs that can be merged together: each client once, no client
    used as a source in the same round. Always picks at least one."""
    if clients.size == 0:
        return np.zeros(0, dtype=bool)
    top = int(max(clients.max(), sources.max())) + 1
    if clients.size * 8 >= top:
        # Dense batch: counting over the frame numbers beats sorting.
        first = np.bincount(clients, minlength=top)[clients] == 1
        repeated = np.flatnonzero(~first)
        first[repeated[first_index(clients[repeated])]] = True
        is_source = np.zeros(top, dtype=bool)
        is_source[sources] = True
        ok = first & ~is_source[clients]
    else:
        first = np.zeros(clients.size, dtype=bool)
        first[first_index(clients)] = True
        ok = first & ~np.isin(clients, sources)
    if not ok.any():
        ok[0] = True
    return ok


def _follow(
    sources: np.ndarray, pending: np.ndarray, forward: dict[int, int]
) -> None:
    """Redirect sources that were merged away to where they went."""
    if not forward:
        return
    for i in pending.tolist():
        s = int(sources[i])
        while s in forward:
            s = forward[s]
        sources[i] = s
