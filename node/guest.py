"""A guest domain and its workload.

What a guest's memory holds:

- page cache: blocks of its disk, read on demand. The disk is a
  copy-on-write overlay of a base image: a block never written reads the
  base image's content and the read emits a disk hint; a written block
  reads content of its own and emits nothing;
- shared libraries: mapping a library reads its blocks into the page cache
  (as an mmap of a file does) and emits one library hint per page;
- anonymous memory: allocated logically zero, written with content unique
  to the guest, freed and scrubbed back to logically zero. A PV guest
  reports the pages it scrubs (and, at boot, its untouched memory) as zero.

Data structures, one numpy entry per GFN or per disk block:
``role`` (free, page cache, anonymous, or page cache mapped by a
library, which is never evicted), ``age`` (when a cache page was
filled, for eviction), ``cache_block`` (the block a cache GFN holds),
``block_gfn`` (where a block is cached, -1 if not) and ``modified`` (the
block was written through the overlay). Free GFNs form a stack.

HVM guests run unmodified: the device model in dom0 still sees their disk
reads, so they emit disk hints, but they map libraries and scrub pages
without telling anyone. Only their untouched memory at boot is reported,
by the domain builder.

Not modelled: the guest kernel's own pages, swap, and the access pattern
of real programs; reads and writes pick blocks and pages uniformly at
random, which makes the page cache colder than a real one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dedup.arrays import unique
from dedup.content import ZERO_CONTENT
from dedup.hints import (
    DISK,
    GUEST,
    LIBRARY,
    ZERO,
    ZERO_KEY,
    HintBatch,
    disk_keys,
    guest_keys,
    library_keys,
)
from node.image import Image

R_FREE, R_CACHE, R_ANON, R_MAPPED = 0, 1, 2, 3
R_ABSENT, R_VOLATILE, R_PINNED = 4, 5, 6
R_TRANSIENT = 7

# Transient data: content ids apart from real contents (small) and from
# every host's fresh contents (at SYNTHETIC_BASE and above).
_TRANSIENT_BASE = 1 << 61


def transient_contents(version: int, n: int) -> np.ndarray:
    """Content ids of version ``version`` of the transient data."""
    return _TRANSIENT_BASE + (version << 32) + np.arange(n, dtype=np.int64)


# write(domid, gfns, contents, zeroing) -> mask of the writes that were done
Writer = Callable[[int, np.ndarray, np.ndarray, bool], np.ndarray]
ContentSource = Callable[[int], np.ndarray]


@dataclass(frozen=True)
class GuestConfig:
    """What the host needs to boot and run one guest."""

    name: str
    index: int
    image: str
    pages: int
    kind: str = "pv"
    boot_read_fraction: float = 0.5
    map_libraries: bool = True
    read_pages_per_tick: int = 64
    disk_write_pages_per_tick: int = 8
    anon_write_pages_per_tick: int = 128
    free_pages_per_tick: int = 32
    burst_tick: int = 0
    transient_pages: int = 0
    transient_ticks: int = 10
    bonus: str = "none"
    bonus_fraction: float = 0.5
    stub: bool = False
    clone_of: str = ""
    warmup_ticks: int = 0

    @property
    def bonus_capacity(self) -> int:
        """GFNs set aside for bonus pages: as many as the guest's own."""
        if self.bonus == "none" or self.kind != "pv":
            return 0
        return self.pages


def draw_boot_blocks(
    rng: np.random.Generator, n_blocks: int, boot_read_fraction: float
) -> np.ndarray:
    """Sorted image blocks a guest reads at boot: the first draw of its
    generator, which placement replays to know what a guest will bring."""
    n_boot = round(boot_read_fraction * n_blocks)
    return np.sort(rng.choice(n_blocks, n_boot, replace=False))


class Guest:
    """One domain: its workload state and the hints it emits."""

    def __init__(
        self,
        domid: int,
        config: GuestConfig,
        image: Image,
        image_uid: int,
        seed: int,
    ) -> None:
        self.domid = domid
        self.config = config
        self.image = image
        self.image_uid = image_uid
        self.rng = np.random.default_rng([seed, config.index])
        # Bonus pages depend on sharing; their own generator keeps the
        # workload identical with and without sharing.
        self.bonus_rng = np.random.default_rng([seed, config.index, 1])
        n = config.pages
        total = n + config.bonus_capacity
        self.role = np.zeros(total, dtype=np.int8)
        self.role[n:] = R_ABSENT
        self.age = np.zeros(total, dtype=np.int64)
        self.cache_block = np.full(total, -1, dtype=np.int64)
        self.block_gfn = np.full(image.n_blocks, -1, dtype=np.int64)
        self.modified = np.zeros(image.n_blocks, dtype=bool)
        self.lost = np.zeros(image.n_blocks, dtype=bool)
        self.refaults = 0
        self._data_blocks = _data_blocks(image)
        self._free = np.arange(n - 1, -1, -1, dtype=np.int64)
        self._n_free = n
        self._clock = 0
        self.paused = False
        self.hints: list[HintBatch] = []
        self._transient: np.ndarray | None = None

    @property
    def pv(self) -> bool:
        """Whether the guest is paravirtualised and sends its own hints."""
        return self.config.kind == "pv"

    def boot(self, write: Writer, fresh: ContentSource) -> None:
        """Read boot blocks, map libraries, report untouched memory."""
        blocks = draw_boot_blocks(
            self.rng, self.image.n_blocks, self.config.boot_read_fraction
        )
        self.read_blocks(blocks, write, fresh)
        if self.config.map_libraries:
            for lib in self.image.libraries():
                self.map_library(lib, write, fresh)
        untouched = self._free[: self._n_free].copy()
        self._hint(untouched, np.full(untouched.size, ZERO_KEY), ZERO)

    def tick(self, write: Writer, fresh: ContentSource) -> None:
        """One tick of the workload: disk reads and writes, anonymous
        writes, frees. Stops early once the guest is paused."""
        c = self.config
        steps = (
            (c.read_pages_per_tick, self._tick_reads),
            (c.disk_write_pages_per_tick, self._tick_disk_writes),
            (c.anon_write_pages_per_tick, self._tick_anon_writes),
            (c.free_pages_per_tick, self._tick_frees),
        )
        self._clock += 1
        for rate, step in steps:
            if self.paused:
                return
            if rate:
                step(rate, write, fresh)
        if c.transient_pages and not self.paused:
            self._tick_transient(write)
        if self._clock == c.burst_tick and not self.paused:
            self.burst(write, fresh)

    def _tick_transient(self, write: Writer) -> None:
        """Replace the transient data with its next version when due.

        Every guest writes the same content ids for a version, so the
        pages are identical across guests until the next version; a
        paravirtual guest reports each page with a guest hint naming its
        content.
        """
        c = self.config
        if self._clock % c.transient_ticks != 1 % c.transient_ticks:
            return
        if self._transient is None:
            self._transient = self._allocate(c.transient_pages)
            self.role[self._transient] = R_TRANSIENT
        version = self._clock // c.transient_ticks
        gfns = self._transient
        cids = transient_contents(version, gfns.size)
        done = self._write(gfns, cids, write)
        if self.pv:
            self._hint(gfns[done], guest_keys(cids[done]), GUEST)

    def burst(self, write: Writer, fresh: ContentSource) -> None:
        """Write every populated page of the guest's own memory once."""
        gfns = np.arange(self.config.pages, dtype=np.int64)
        self._write(gfns, fresh(gfns.size), write)

    # Bonus pages ---------------------------------------------------------

    def absent_bonus_gfns(self, n: int) -> np.ndarray:
        """Up to ``n`` bonus GFNs that have no frame now."""
        base = self.config.pages
        return base + np.flatnonzero(self.role[base:] == R_ABSENT)[:n]

    def fill_bonus(
        self,
        gfns: np.ndarray,
        write: Writer,
        fresh: ContentSource,
        volatile_share: float = 1.0,
    ) -> np.ndarray:
        """Use newly lent bonus pages; return those made volatile.

        Volatile pages hold clean page cache: blocks not cached elsewhere,
        read with no hint so that they stay private. A guest that breaks
        its promise (``volatile_share`` < 1) keeps the rest as memory of
        its own it will not give up.
        """
        n_volatile = round(volatile_share * gfns.size)
        pinned = gfns[n_volatile:]
        gfns = gfns[:n_volatile]
        uncached = np.flatnonzero(self.block_gfn < 0)
        take = min(gfns.size, uncached.size)
        blocks = np.sort(self.bonus_rng.choice(uncached, take, replace=False))
        contents = fresh(gfns.size)
        cached = self.image.block_cids[blocks]
        contents[:take] = np.where(
            self.modified[blocks], contents[:take], cached
        )
        self._write(gfns, contents, write)
        self._write(pinned, fresh(pinned.size), write)
        self.role[gfns] = R_VOLATILE
        self.role[pinned] = R_PINNED
        self.cache_block[gfns[:take]] = blocks
        self.block_gfn[blocks] = gfns[:take]
        return gfns

    def lose(self, gfns: np.ndarray, reclaimed: bool) -> None:
        """Bonus pages given up: their cached blocks are gone. A block
        lost to a reclaim costs a refault when it is read again."""
        blocks = self.cache_block[gfns]
        blocks = blocks[blocks >= 0]
        self.block_gfn[blocks] = -1
        if reclaimed:
            self.lost[blocks] = True
        self.cache_block[gfns] = -1
        self.role[gfns] = R_ABSENT

    def shared_pages(self, p2m: np.ndarray, count: np.ndarray) -> int:
        """Pages of the guest's own memory that map a shared frame."""
        mfns = p2m[: self.config.pages]
        mfns = mfns[mfns >= 0]
        return int(np.count_nonzero(count[mfns] >= 2))

    # Page cache ----------------------------------------------------------

    def read_blocks(
        self, blocks: np.ndarray, write: Writer, fresh: ContentSource
    ) -> None:
        """Read disk blocks that are not cached into free GFNs."""
        blocks = unique(blocks)
        blocks = blocks[self.block_gfn[blocks] < 0]
        lost = self.lost[blocks]
        self.refaults += int(np.count_nonzero(lost))
        self.lost[blocks[lost]] = False
        gfns = self._allocate(blocks.size)
        blocks = blocks[: gfns.size]
        contents = self.image.block_cids[blocks].copy()
        mod = self.modified[blocks]
        contents[mod] = fresh(int(mod.sum()))
        done = self._write(gfns, contents, write)
        gfns, blocks, mod = gfns[done], blocks[done], mod[done]
        self.role[gfns] = R_CACHE
        self.age[gfns] = self._clock
        self.cache_block[gfns] = blocks
        self.block_gfn[blocks] = gfns
        clean = ~mod
        self._hint(gfns[clean], disk_keys(self.image_uid, blocks[clean]), DISK)

    def map_library(self, lib, write: Writer, fresh: ContentSource) -> None:
        """Map a shared library: cache its blocks, hint each page.

        Mapped pages stay in memory: the page cache evicts only pages
        nothing maps.
        """
        blocks = np.arange(lib.first_block, lib.first_block + lib.n_blocks)
        self.read_blocks(blocks, write, fresh)
        gfns = self.block_gfn[blocks]
        self.role[gfns[gfns >= 0]] = R_MAPPED
        if not self.pv:
            return
        clean = (gfns >= 0) & ~self.modified[blocks]
        pages = np.flatnonzero(clean)
        self._hint(gfns[clean], library_keys(lib.digest, pages), LIBRARY)

    def _tick_reads(self, rate, write, fresh) -> None:
        blocks = self.rng.integers(0, self.image.n_blocks, rate)
        self.read_blocks(blocks, write, fresh)

    def _tick_disk_writes(self, rate, write, fresh) -> None:
        if self._data_blocks.size == 0:
            return
        picks = self.rng.integers(0, self._data_blocks.size, rate)
        blocks = unique(self._data_blocks[picks])
        gfns = self.block_gfn[blocks]
        # A block cached in a volatile page is dropped from the cache, so
        # that volatile pages stay clean.
        volatile = gfns >= 0
        volatile[volatile] = self.role[gfns[volatile]] == R_VOLATILE
        self.block_gfn[blocks[volatile]] = -1
        self.cache_block[gfns[volatile]] = -1
        gfns[volatile] = -1
        cached = gfns >= 0
        done = self._write(gfns[cached], fresh(int(cached.sum())), write)
        # A block whose cached page could not be written stays unmodified.
        ok = np.ones(blocks.size, dtype=bool)
        ok[np.flatnonzero(cached)[~done]] = False
        self.modified[blocks[ok]] = True

    # Anonymous memory ----------------------------------------------------

    def _tick_anon_writes(self, rate, write, fresh) -> None:
        anon = np.flatnonzero(self.role == R_ANON)
        n_old = min(rate // 2, anon.size)
        old = (
            self.rng.choice(anon, n_old, replace=False) if n_old else anon[:0]
        )
        new = self._allocate(rate - n_old)
        done_old = self._write(old, fresh(old.size), write)
        # A page being allocated is logically zero: its fault needs no copy.
        done_new = self._write(new, fresh(new.size), write, True)
        self.role[old[done_old]] = R_ANON
        self.role[new[done_new]] = R_ANON
        self._release(new[~done_new])

    def _tick_frees(self, rate, write, fresh) -> None:
        anon = np.flatnonzero(self.role == R_ANON)
        n = min(rate, anon.size)
        if n == 0:
            return
        gfns = np.sort(self.rng.choice(anon, n, replace=False))
        # Scrubbing writes zeros: on a shared frame, a no-copy fault.
        done = self._write(gfns, np.full(n, ZERO_CONTENT), write, True)
        gfns = gfns[done]
        self.role[gfns] = R_FREE
        self._release(gfns)
        if self.pv:
            self._hint(gfns, np.full(gfns.size, ZERO_KEY), ZERO)

    # Helpers -------------------------------------------------------------

    def _allocate(self, n: int) -> np.ndarray:
        """Take ``n`` free GFNs, evicting the oldest cache pages if short."""
        if n > self._n_free:
            self._evict(n - self._n_free)
        n = min(n, self._n_free)
        top = self._n_free
        self._n_free = top - n
        return self._free[top - n : top][::-1].copy()

    def _evict(self, n: int) -> None:
        cache = np.flatnonzero(self.role == R_CACHE)
        if cache.size == 0:
            return
        n = min(n, cache.size)
        oldest = cache[np.argsort(self.age[cache], kind="stable")[:n]]
        self.block_gfn[self.cache_block[oldest]] = -1
        self.cache_block[oldest] = -1
        self.role[oldest] = R_FREE
        # An evicted page keeps its stale content until it is reused.
        self._release(oldest)

    def _release(self, gfns: np.ndarray) -> None:
        top = self._n_free
        self._free[top : top + gfns.size] = gfns[::-1]
        self._n_free = top + gfns.size

    def _write(
        self, gfns, contents, write: Writer, zeroing: bool = False
    ) -> np.ndarray:
        # Only a paravirtual guest can tell the hypervisor that it is
        # zeroing a page, which spares the copy when the write faults.
        done = write(self.domid, gfns, contents, zeroing and self.pv)
        if not done.all():
            self.paused = True
        return done

    def _hint(self, gfns: np.ndarray, keys: np.ndarray, source: int) -> None:
        if gfns.size == 0:
            return
        self.hints.append(
            HintBatch(
                np.full(gfns.size, self.domid, dtype=np.int32),
                gfns.astype(np.int64),
                keys.astype(np.int64),
                np.full(gfns.size, source, dtype=np.int8),
            )
        )

    def take_hints(self) -> HintBatch:
        """The hints emitted since the last call."""
        batch = HintBatch.concat(self.hints)
        self.hints = []
        return batch

    def resident(self) -> dict[str, int]:
        """Pages of its base image this guest holds unmodified in cache."""
        cached = self.block_gfn >= 0
        return {
            self.image.name: int(np.count_nonzero(cached & ~self.modified))
        }


def _data_blocks(image: Image) -> np.ndarray:
    """Blocks a guest may write: all but those of shared libraries, which
    programs map and do not rewrite in place."""
    writable = np.ones(image.n_blocks, dtype=bool)
    for lib in image.libraries():
        writable[lib.first_block : lib.first_block + lib.n_blocks] = False
    return np.flatnonzero(writable)
