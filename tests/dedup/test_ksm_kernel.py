"""The KSM-style scanner against the running kernel's KSM.

The same page contents go to a mergeable region of this process, scanned
by ksmd, and to a one-domain ``HostMemory`` scanned by ``KsmScanner``
with the same settings. After every few full scans the kernel's counters
must equal the scanner's. The contents cover duplicates beyond
``max_page_sharing`` (chains of dups), zero pages (with and without
``use_zero_pages``), volatile pages rewritten between scans, unique
pages, and writes into merged pages (copy-on-write breaks, stale nodes),
then random contents rewritten at random; then batches of fewer pages
than the region, compared between batches, in the middle of scans.

Skipped, with the reason, where /sys/kernel/mm/ksm is missing or not
writable, or where another process uses KSM (see ``kernel_ksm``). Every
setting is restored afterwards.
"""

from __future__ import annotations

import numpy as np
import pytest

from dedup.frames import COW_DOMAIN
from dedup.ksm import COUNTERS, UNSTABLE, KsmParams, KsmScanner
from dedup.ksm_reference import ReferenceKsm
from dedup.memory import HostMemory
from tests.dedup import kernel_ksm

MAX_SHARING = 4


def _layout(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Page numbers of each kind, shuffled over the region."""
    sizes = {"a": 11, "b": 3, "c": 3, "unique": 5, "zero": 6, "volatile": 4}
    pages = rng.permutation(sum(sizes.values()))
    out, at = {}, 0
    for name, n in sizes.items():
        out[name] = np.sort(pages[at : at + n])
        at += n
    return out


class Both:
    """One set of page contents, written to the kernel and the model."""

    def __init__(self, n_pages: int, use_zero_pages: bool) -> None:
        self.region = kernel_ksm.Region(n_pages)
        self.memory = HostMemory(3 * n_pages)
        self.memory.create_domain(1, n_pages)
        self.scanner = KsmScanner(
            self.memory,
            KsmParams(
                max_page_sharing=MAX_SHARING, use_zero_pages=use_zero_pages
            ),
        )
        self.next_cid = 1000
        self.ref_memory = HostMemory(3 * n_pages)
        self.ref_memory.create_domain(1, n_pages)
        self.reference = ReferenceKsm(self.ref_memory, self.scanner.params)

    def fill(self, pages: np.ndarray, cids: np.ndarray | int) -> None:
        cids = np.broadcast_to(np.asarray(cids, dtype=np.int64), pages.shape)
        self.region.fill(pages, cids)
        self.memory.write(1, pages, cids)
        self.ref_memory.write(1, pages, cids)

    def fresh(self, pages: np.ndarray) -> None:
        """Give each page a content no other page has."""
        cids = self.next_cid + np.arange(pages.size)
        self.next_cid += pages.size
        self.fill(pages, cids)

    def keep_a_mapping(self, pages: np.ndarray) -> np.ndarray:
        """Drop pages so that every merged frame keeps a mapping."""
        f = self.memory.frames
        mfns = self.memory.p2m[pages]
        keep = np.ones(pages.size, dtype=bool)
        seen: dict[int, int] = {}
        for i, mfn in enumerate(mfns.tolist()):
            seen[mfn] = seen.get(mfn, 0) + 1
            if f.owner[mfn] == COW_DOMAIN and seen[mfn] >= f.count[mfn]:
                keep[i] = False
        return pages[keep]

    def in_unstable_tree(self, pages: np.ndarray) -> np.ndarray:
        """Which pages sit in this scan's unstable tree."""
        s = self.scanner
        return (s.item[pages] == UNSTABLE) & (s.seq[pages] == s.full_scans)

    def scan_and_compare(self, ksm: kernel_ksm.KsmSysfs, n: int) -> dict:
        before = kernel_ksm.counters()
        scanned = self.scanner.work.pages_scanned
        scans = self.scanner.full_scans
        done = ksm.scan(n)
        self.scanner.run(done, self.memory.p2m.size + 1)
        self.memory.check()
        for _ in range(done):
            self.reference.full_scan()
        reference = self.reference.counters()
        after = kernel_ksm.counters()
        kernel = {
            name: after[name] - before[name]
            if name in ("full_scans", "pages_scanned")
            else after[name]
            for name in COUNTERS
        }
        model = self.scanner.counters()
        model["full_scans"] = self.scanner.full_scans - scans
        model["pages_scanned"] = self.scanner.work.pages_scanned - scanned
        reference["full_scans"] = done
        reference["pages_scanned"] = model["pages_scanned"]
        assert kernel == reference
        assert kernel == model
        return kernel


@pytest.fixture(scope="module")
def available():
    why = kernel_ksm.unavailable() or kernel_ksm.ksm_in_use()
    if why:
        pytest.skip(why)


@pytest.mark.parametrize("use_zero_pages", [False, True])
def test_counters_equal_the_kernels(available, use_zero_pages):
    rng = np.random.default_rng(7)
    kinds = _layout(rng)
    n_pages = sum(p.size for p in kinds.values())
    both = Both(n_pages, use_zero_pages)
    try:
        with kernel_ksm.KsmSysfs(MAX_SHARING, use_zero_pages) as ksm:
            both.fill(kinds["a"], 1)
            both.fill(kinds["b"], 2)
            both.fill(kinds["c"], 3)
            both.fill(kinds["zero"], 0)
            both.fresh(kinds["unique"])
            both.fresh(kinds["volatile"])

            # First visit: every checksum is new, every page volatile.
            first = both.scan_and_compare(ksm, 1)
            assert first["pages_volatile"] == n_pages

            # Second: steady pages merge; 11 copies of a fill 3 dups, 6
            # zero pages 2 more unless they go to the zero page.
            both.fresh(kinds["volatile"])
            second = both.scan_and_compare(ksm, 1)
            assert second["stable_node_dups"] == 3 if use_zero_pages else 5
            assert second["pages_unshared"] == kinds["unique"].size

            # Writes break sharing: one copy of a, every copy of c (a
            # stale node), a copy of b turned into a; then settle.
            both.fresh(kinds["volatile"])
            both.fresh(kinds["a"][:1])
            both.fresh(kinds["c"])
            both.fill(kinds["b"][:1], 1)
            both.scan_and_compare(ksm, 1)
            both.fresh(kinds["volatile"])
            both.scan_and_compare(ksm, 2)

            # Zero pages written with data and back to zero.
            both.fresh(kinds["zero"][:2])
            both.scan_and_compare(ksm, 1)
            both.fill(kinds["zero"][:2], 0)
            both.scan_and_compare(ksm, 2)
    finally:
        both.region.close()


@pytest.mark.parametrize("seed", [1, 2])
def test_random_contents_and_rewrites(available, seed):
    """Skewed random contents, random rewrites between scans: merged
    pages written (some frames lose every mapping), pages joining and
    leaving full nodes, zero pages."""
    rng = np.random.default_rng(seed)
    n_pages = 3000
    zero = bool(seed % 2)
    both = Both(n_pages, use_zero_pages=zero)
    pages = np.arange(n_pages)
    try:
        with kernel_ksm.KsmSysfs(MAX_SHARING, zero) as ksm:
            both.fill(pages, rng.zipf(1.6, n_pages) % 300)
            for _ in range(6):
                both.scan_and_compare(ksm, 1)
                hit = rng.choice(n_pages, 200, replace=False)
                both.fill(np.sort(hit), rng.zipf(1.6, hit.size) % 300)
    finally:
        both.region.close()


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_batches_stopping_mid_scan(available, seed):
    """Wake-ups of fewer pages than the region: the kernel's state
    between batches, mid-scan, equals the scanner's after as many
    batches, with pages rewritten between batches.

    Three kinds of mid-scan write are left out, as the kernel's result
    then depends on things the model does not hold. A page rewritten
    while in the unstable tree stays where its old content put it, and
    whether a search for its new content meets it depends on the tree's
    shape. Rewriting every page that maps a merged frame frees the frame
    and leaves its node stale: the kernel drops the node when any search
    walks past it, which again depends on the tree's shape, the scanner
    when the node's content is searched or its pages visited, at the
    latest by the end of the scan. A merged page rewritten with the
    content it had is copied to a fresh page that sits in a per-CPU LRU
    batch until the next full scan drains it: its raised reference count
    makes the kernel's merge fail, leaving it volatile, where the scanner
    merges it.
    """
    rng = np.random.default_rng(seed)
    n_pages, batch = 2000, 300
    zero = seed == 6
    both = Both(n_pages, use_zero_pages=zero)
    pages = np.arange(n_pages)
    try:
        with kernel_ksm.KsmSysfs(MAX_SHARING, zero):
            kernel_ksm.write("pages_to_scan", batch)
            kernel_ksm.write("sleep_millisecs", 600_000)
            both.fill(pages, rng.zipf(1.6, n_pages) % 200)
            for step in range(40):
                kernel_ksm.step_batches(1)
                both.scanner.run(1, batch)
                model = both.scanner.counters()
                kernel = kernel_ksm.counters()
                for name in ("full_scans", "pages_scanned"):
                    del model[name], kernel[name]
                assert kernel == model, f"after batch {step + 1}"
                if step % 3 == 2:
                    hit = np.sort(rng.choice(n_pages, 60, replace=False))
                    hit = hit[~both.in_unstable_tree(hit)]
                    hit = both.keep_a_mapping(hit)
                    new = rng.zipf(1.6, hit.size) % 200
                    same = both.memory.read(1, hit) == new
                    both.fill(hit[~same], new[~same])
    finally:
        both.region.close()
