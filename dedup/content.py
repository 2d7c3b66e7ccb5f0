"""Exact content identities for 4 KiB pages.

A content id names one distinct sequence of 4096 bytes. The
:class:`ContentStore` interns pages: equal bytes always get the same id
and different bytes always get different ids, even when their 64-bit
fingerprints collide, because a fingerprint match is only a candidate
that is confirmed by comparing the full bytes. This is the check the CoW
daemon makes before it shares two frames.

Data structures:

- ``_segments``: the bytes of every distinct content, one row of 4096
  bytes per content id, in fixed segments of ``_SEGMENT_PAGES`` rows so
  that growing the store never copies what it already holds. Row 0 is
  the all-zero page, which is always ``ZERO_CONTENT``; real non-zero
  contents get ids 1, 2, 3, ... in order of first appearance.
- ``_fps``: the fingerprint of each row, indexed the same way.
- ``_by_fp``: fingerprint -> content id, or ``_CHAINED`` when several
  contents share that fingerprint; their ids are then listed in
  ``_chains``.

Left out: synthetic contents (ids at or above ``SYNTHETIC_BASE``) are
made elsewhere and never interned here, and contents are never
forgotten, so the store grows with every distinct page it has seen.
"""

from collections.abc import Callable

import mmh3
import numpy as np

PAGE_SIZE = 4096
ZERO_CONTENT = 0
SYNTHETIC_BASE = 1 << 62

_MASK64 = (1 << 64) - 1
_CHAINED = -1
# Pages are verified and committed in sub-batches of this many pages, so
# that the scratch buffers stay at 16 MiB each and a fingerprint collision
# replays only one sub-batch on the slow path.
_BATCH_PAGES = 4096
_SEGMENT_PAGES = 8192


def fingerprint64(page: bytes | memoryview) -> int:
    """Return the unsigned 64-bit mmh3 fingerprint of a page.

    It equals ``mmh3.hash64(page, signed=False)[0]``; the digest form is
    used because it accepts any buffer, such as a row of a numpy array,
    without a copy.
    """
    return mmh3.mmh3_x64_128_utupledigest(page, 0)[0]


def _fingerprint_rows(
    pages: np.ndarray, hash_fn: Callable[[bytes], int] | None
) -> list[int]:
    """Fingerprint each row of a C-contiguous (n, PAGE_SIZE) array."""
    if hash_fn is None:
        digest = mmh3.mmh3_x64_128_utupledigest
        return [digest(row, 0)[0] for row in pages]
    return [hash_fn(row.tobytes()) & _MASK64 for row in pages]


def _rows_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Compare two (n, PAGE_SIZE) uint8 arrays row by row."""
    wide_a = a.view(np.uint64)
    wide_b = b.view(np.uint64)
    return (wide_a == wide_b).all(axis=1)


class ContentStore:
    """Interns page contents, verifying every fingerprint match.

    Equal bytes get the same content id; different bytes get different
    ids, even when fingerprints collide.
    """

    bytes_compared: int
    """Bytes compared to confirm fingerprint matches while interning."""

    collisions: int
    """Comparisons where fingerprints matched but the bytes differed."""

    def __init__(self, hash_fn: Callable[[bytes], int] | None = None) -> None:
        """Create an empty store.

        ``hash_fn`` maps a page's bytes to an integer fingerprint; the
        default is :func:`fingerprint64`. Tests pass a colliding one.
        """
        self._hash_fn = hash_fn
        self._segments = [np.empty((_SEGMENT_PAGES, PAGE_SIZE), np.uint8)]
        self._segments[0][ZERO_CONTENT] = 0
        self._fps = np.zeros(1024, dtype=np.uint64)
        self._count = 1
        self._zero_seen = False
        self._by_fp: dict[int, int] = {}
        self._chains: dict[int, list[int]] = {}
        self._scratch: np.ndarray | None = None
        self.bytes_compared = 0
        self.collisions = 0

        # The zero page is stored from the start so that zero pages are
        # found and verified the same way as any other content.
        zero_fp = _fingerprint_rows(self._segments[0][:1], hash_fn)[0]
        self._fps[0] = zero_fp
        self._by_fp[zero_fp] = ZERO_CONTENT

    @property
    def distinct_pages(self) -> int:
        """Distinct real contents interned, the zero page if seen."""
        return self._count - (0 if self._zero_seen else 1)

    def intern_pages(self, pages: np.ndarray) -> np.ndarray:
        """Return the int64 content id of each row of ``pages``.

        ``pages`` is a uint8 array of shape (n, PAGE_SIZE).
        """
        if pages.dtype != np.uint8 or pages.ndim != 2:
            raise ValueError(
                f"pages must be a 2-D uint8 array, got {pages.dtype} "
                f"with shape {pages.shape}"
            )
        if pages.shape[1] != PAGE_SIZE:
            raise ValueError(
                f"pages must have {PAGE_SIZE} columns, got {pages.shape[1]}"
            )
        pages = np.ascontiguousarray(pages)
        cids = np.empty(len(pages), dtype=np.int64)
        for start in range(0, len(pages), _BATCH_PAGES):
            batch = pages[start : start + _BATCH_PAGES]
            cids[start : start + len(batch)] = self._intern_batch(batch)
        return cids

    def fingerprint(self, cids: np.ndarray) -> np.ndarray:
        """Return the uint64 fingerprints of real content ids."""
        cids = np.asarray(cids, dtype=np.int64)
        self._check_ids(cids)
        return self._fps[cids]

    def page_bytes(self, cid: int) -> bytes:
        """Return the exact PAGE_SIZE bytes of a real content id."""
        self._check_ids(np.asarray([cid], dtype=np.int64))
        return self._row(cid).tobytes()

    def _check_ids(self, cids: np.ndarray) -> None:
        """Refuse ids that were never handed out by this store."""
        bad = (cids < 0) | (cids >= self._count)
        if bad.any():
            raise ValueError(
                f"content id {int(cids[bad][0])} is not a real content "
                f"of this store (it holds ids 0 to {self._count - 1})"
            )

    def _intern_batch(self, pages: np.ndarray) -> np.ndarray:
        """Intern one sub-batch, by the fast path when it is exact."""
        fps = _fingerprint_rows(pages, self._hash_fn)
        cids = self._try_fast(pages, fps)
        if cids is None:
            cids = self._intern_exact(pages, fps)
        if not self._zero_seen and (cids == ZERO_CONTENT).any():
            self._zero_seen = True
        return cids

    def _try_fast(
        self, pages: np.ndarray, fps: list[int]
    ) -> np.ndarray | None:
        """Intern a batch if every fingerprint match proves exact.

        Each page is paired with one candidate: the stored content with
        its fingerprint, or else the first page of the batch with it.
        All pairs are compared at once. Nothing is changed unless all of
        them match; otherwise None is returned and the caller replays the
        batch page by page, which keeps ids in order of first appearance.
        """
        paired = self._pair_candidates(fps)
        if paired is None:
            return None
        cids, leaders = paired
        known = np.flatnonzero(cids >= 0)
        followers = np.flatnonzero(
            (cids < 0) & (leaders != np.arange(len(cids)))
        )
        if not self._verify_known(pages, known, cids[known]):
            return None
        if not self._verify_followers(pages, followers, leaders[followers]):
            return None

        # Every match is exact: give the new contents their ids.
        new_rows = np.flatnonzero(leaders == np.arange(len(cids)))
        new_rows = new_rows[cids[new_rows] < 0]
        new_fps = [fps[i] for i in new_rows]
        cids[new_rows] = self._append(pages, new_rows, new_fps)
        # Leaders have fingerprints new to the store and to each other.
        ids = cids[new_rows].tolist()
        self._by_fp.update(zip(new_fps, ids, strict=True))
        cids[followers] = cids[leaders[followers]]
        return cids

    def _pair_candidates(
        self, fps: list[int]
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Find each page's stored content id, or its batch leader.

        Returns the ids (-1 where the fingerprint is new) and, for pages
        with new fingerprints, the first batch row with the same one.
        Returns None if a fingerprint has several contents already.
        """
        known = [-1] * len(fps)
        leader = list(range(len(fps)))
        first_in_batch: dict[int, int] = {}
        lookup = self._by_fp.get
        for i, fp in enumerate(fps):
            cid = lookup(fp)
            if cid is None:
                leader[i] = first_in_batch.setdefault(fp, i)
            elif cid == _CHAINED:
                return None
            else:
                known[i] = cid
        return np.array(known, np.int64), np.array(leader, np.int64)

    def _verify_known(
        self, pages: np.ndarray, rows: np.ndarray, cids: np.ndarray
    ) -> bool:
        """Check that ``pages[rows]`` equal the stored ``cids``."""
        # Sorting by id turns the gather into one slice per segment.
        order = np.argsort(cids, kind="stable")
        rows, cids = rows[order], cids[order]
        selected, candidates = self._scratch_pair(len(rows))
        np.take(pages, rows, axis=0, out=selected, mode="clip")
        self._gather_sorted(cids, candidates)
        return self._compare(selected, candidates)

    def _verify_followers(
        self, pages: np.ndarray, rows: np.ndarray, leaders: np.ndarray
    ) -> bool:
        """Check that ``pages[rows]`` equal ``pages[leaders]``."""
        selected, candidates = self._scratch_pair(len(rows))
        np.take(pages, rows, axis=0, out=selected, mode="clip")
        np.take(pages, leaders, axis=0, out=candidates, mode="clip")
        return self._compare(selected, candidates)

    def _compare(self, selected: np.ndarray, candidates: np.ndarray) -> bool:
        """Compare pages with their candidates, counting the bytes."""
        self.bytes_compared += selected.size
        return bool(_rows_equal(selected, candidates).all())

    def _scratch_pair(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Two reusable (n, PAGE_SIZE) buffers, n <= _BATCH_PAGES.

        Reusing them spares a fresh 16 MiB allocation, and the page
        faults that come with it, for every batch.
        """
        if self._scratch is None:
            shape = (2, _BATCH_PAGES, PAGE_SIZE)
            self._scratch = np.empty(shape, dtype=np.uint8)
        return self._scratch[0, :n], self._scratch[1, :n]

    def _intern_exact(self, pages: np.ndarray, fps: list[int]) -> np.ndarray:
        """Intern a batch page by page, comparing every candidate."""
        cids = np.empty(len(pages), dtype=np.int64)
        for i, fp in enumerate(fps):
            cids[i] = self._lookup_or_add(pages[i], fp)
        return cids

    def _lookup_or_add(self, page: np.ndarray, fp: int) -> int:
        """Return the id of ``page``, adding it if it is new."""
        for cid in self._candidates(fp):
            self.bytes_compared += PAGE_SIZE
            if np.array_equal(self._row(cid), page):
                return cid
            self.collisions += 1
        cid = int(self._append(page[np.newaxis], np.zeros(1, int), [fp])[0])
        self._index(fp, cid)
        return cid

    def _candidates(self, fp: int) -> list[int]:
        """Ids of the stored contents with fingerprint ``fp``."""
        cid = self._by_fp.get(fp)
        if cid is None:
            return []
        if cid == _CHAINED:
            return self._chains[fp]
        return [cid]

    def _append(
        self, pages: np.ndarray, rows: np.ndarray, fps: list[int]
    ) -> np.ndarray:
        """Store ``pages[rows]`` as new distinct contents; return ids."""
        first = self._count
        done = 0
        while done < len(rows):
            segment, offset = divmod(self._count, _SEGMENT_PAGES)
            if segment == len(self._segments):
                self._segments.append(
                    np.empty((_SEGMENT_PAGES, PAGE_SIZE), dtype=np.uint8)
                )
            step = min(len(rows) - done, _SEGMENT_PAGES - offset)
            out = self._segments[segment][offset : offset + step]
            chunk = rows[done : done + step]
            np.take(pages, chunk, axis=0, out=out, mode="clip")
            self._count += step
            done += step

        self._reserve_fps(self._count)
        self._fps[first : self._count] = fps
        return np.arange(first, self._count, dtype=np.int64)

    def _gather_sorted(self, cids: np.ndarray, out: np.ndarray) -> None:
        """Copy the stored rows of sorted ``cids`` into ``out``."""
        starts = np.arange(len(self._segments) + 1) * _SEGMENT_PAGES
        bounds = np.searchsorted(cids, starts).tolist()
        for number, segment in enumerate(self._segments):
            lo, hi = bounds[number], bounds[number + 1]
            if lo < hi:
                offsets = cids[lo:hi] - int(starts[number])
                np.take(segment, offsets, axis=0, out=out[lo:hi], mode="clip")

    def _row(self, cid: int) -> np.ndarray:
        """Return the stored row of one content id."""
        segment, offset = divmod(cid, _SEGMENT_PAGES)
        return self._segments[segment][offset]

    def _index(self, fp: int, cid: int) -> None:
        """Record that content ``cid`` has fingerprint ``fp``."""
        other = self._by_fp.setdefault(fp, cid)
        if other == cid:
            return
        if other != _CHAINED:
            self._chains[fp] = [other]
            self._by_fp[fp] = _CHAINED
        self._chains[fp].append(cid)

    def _reserve_fps(self, needed: int) -> None:
        """Grow the fingerprint array to hold ``needed`` contents."""
        if needed <= len(self._fps):
            return
        fps = np.zeros(max(needed, 2 * len(self._fps)), dtype=np.uint64)
        fps[: len(self._fps)] = self._fps
        self._fps = fps
