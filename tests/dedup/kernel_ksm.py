"""Driving the running kernel's KSM through /sys/kernel/mm/ksm.

Test support for the cross-check of ``dedup.ksm`` against Linux KSM.

``KsmSysfs`` saves every writable KSM setting when it is entered and
writes every one of them back when it is left, failure or not. While it
is held, ksmd is stopped between scans (``run`` = 0), smart scan and the
advisor are off, and ``pages_to_scan`` exceeds the pages of the test
region, so that each wake-up of ksmd is exactly one full scan: the scan
reaches the end of the only mergeable area, counts a full scan and ends
its batch. Stopping ksmd by writing ``run`` waits for the batch in
progress (the write takes the mutex ksmd holds while it scans), so the
counters are read between full scans, never in the middle of one.

The kernel's counters are global: they sum over every process with
mergeable memory. Rather than measuring deltas against processes that
may merge or unmerge while we scan, the check needs the machine to
itself: ``ksm_in_use`` reports any other process with mergeable memory,
or any KSM page already present, and the test is then skipped with that
reason. On leaving, the test region is unmapped and ``run`` = 2 unmerges
what is left, so that ``max_page_sharing`` (which the kernel refuses to
change while KSM pages exist) can be restored.
"""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path

import numpy as np

from dedup.content import PAGE_SIZE

KSM = Path("/sys/kernel/mm/ksm")
SETTINGS = (
    "run",
    "pages_to_scan",
    "sleep_millisecs",
    "max_page_sharing",
    "use_zero_pages",
    "merge_across_nodes",
    "smart_scan",
    "advisor_mode",
    "stable_node_chains_prune_millisecs",
)
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
_STATE = ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile")


def read(name: str) -> str:
    """One KSM file, stripped; for a choice, the selected one."""
    text = (KSM / name).read_text().strip()
    if "[" in text:
        return text[text.index("[") + 1 : text.index("]")]
    return text


def write(name: str, value: object) -> None:
    """Write one KSM setting."""
    (KSM / name).write_text(f"{value}\n")


def counters() -> dict[str, int]:
    """The kernel's KSM counters now."""
    return {name: int(read(name)) for name in COUNTERS}


def unavailable() -> str | None:
    """Why the real KSM cannot be driven here, or None."""
    if not KSM.is_dir():
        return f"{KSM} does not exist (kernel without KSM)"
    missing = [n for n in (*SETTINGS, *COUNTERS) if not (KSM / n).exists()]
    if missing:
        return f"{KSM} lacks {', '.join(missing)} (kernel too old)"
    if not os.access(KSM / "run", os.W_OK):
        return f"{KSM}/run is not writable (needs root)"
    try:
        write("pages_to_scan", read("pages_to_scan"))
    except OSError as exc:
        return f"{KSM} refuses writes: {exc}"
    return None


def ksm_in_use() -> str | None:
    """Why KSM is not ours alone: another user, or pages already merged."""
    for stat in Path("/proc").glob("[0-9]*/ksm_stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if "ksm_mergeable: yes" in text or "ksm_merge_any: yes" in text:
            if int(stat.parent.name) != os.getpid():
                return f"process {stat.parent.name} has mergeable memory"
    state = {name: int(read(name)) for name in _STATE}
    if any(state.values()):
        return f"KSM already holds pages: {state}"
    return None


class KsmSysfs:
    """Save KSM's settings, set them for the test, restore them all."""

    def __init__(self, max_page_sharing: int, use_zero_pages: bool) -> None:
        self.max_page_sharing = max_page_sharing
        self.use_zero_pages = use_zero_pages
        self.saved: dict[str, str] = {}

    def __enter__(self) -> KsmSysfs:
        self.saved = {name: read(name) for name in SETTINGS}
        try:
            write("run", 0)
            write("advisor_mode", "none")
            write("smart_scan", 0)
            write("max_page_sharing", self.max_page_sharing)
            write("use_zero_pages", int(self.use_zero_pages))
            # Far more than the region: one wake-up is one full scan.
            write("pages_to_scan", 1 << 20)
            write("sleep_millisecs", 200)
            # Prune chains at every search, not every 2 s of wall time:
            # the kernel then always picks the fullest dup with room.
            write("stable_node_chains_prune_millisecs", 0)
        except BaseException:
            self.restore()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def restore(self) -> None:
        """Unmerge what is left and write back every saved setting."""
        write("run", 0)
        write("run", 2)
        for name in SETTINGS:
            if name != "run":
                write(name, self.saved[name])
        write("run", self.saved["run"])

    def scan(self, n: int, timeout_seconds: float = 20.0) -> int:
        """Let ksmd do at least ``n`` full scans; return how many it did."""
        start = int(read("full_scans"))
        write("run", 1)
        deadline = time.monotonic() + timeout_seconds
        try:
            while int(read("full_scans")) < start + n:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"ksmd did {int(read('full_scans')) - start} of "
                        f"{n} full scans in {timeout_seconds} s"
                    )
                time.sleep(0.001)
        finally:
            write("run", 0)
        return int(read("full_scans")) - start


def step_batches(n: int, timeout_seconds: float = 20.0) -> None:
    """Let ksmd run exactly ``n`` wake-ups of ``pages_to_scan`` pages.

    Needs a ``sleep_millisecs`` far longer than the test: after each
    batch ksmd sleeps. The first batch is started by ``run`` = 1; each
    later one by changing ``sleep_millisecs``, which wakes ksmd from its
    sleep. A batch has begun when ``pages_scanned`` or ``full_scans``
    moves; writing ``run`` again then waits for its end, since ksmd holds
    the mutex that the write takes for the whole batch.
    """
    for _ in range(n):
        before = (read("pages_scanned"), read("full_scans"))
        if read("run") != "1":
            write("run", 1)
        else:
            sleep = int(read("sleep_millisecs"))
            write("sleep_millisecs", 600_000 if sleep != 600_000 else 599_999)
        deadline = time.monotonic() + timeout_seconds
        while (read("pages_scanned"), read("full_scans")) == before:
            if time.monotonic() > deadline:
                raise TimeoutError("ksmd did not run its batch")
            time.sleep(0.0005)
        write("run", 1)


class Region:
    """Anonymous memory of one process, mergeable, one page per entry."""

    def __init__(self, n_pages: int) -> None:
        self.n_pages = n_pages
        # KSM merges private anonymous memory only; Python's default
        # for an anonymous map is MAP_SHARED, which madvise ignores.
        self.map = mmap.mmap(
            -1,
            n_pages * PAGE_SIZE,
            flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
        )
        # Huge pages would be split by KSM on the way; plain 4 KiB pages
        # keep the kernel's accounting page by page.
        self.map.madvise(mmap.MADV_NOHUGEPAGE)
        self.map.madvise(mmap.MADV_MERGEABLE)

    def fill(self, pages: np.ndarray, contents: np.ndarray) -> None:
        """Write ``page_bytes(contents[i])`` at page ``pages[i]``."""
        for page, cid in zip(pages.tolist(), contents.tolist(), strict=True):
            at = page * PAGE_SIZE
            self.map[at : at + PAGE_SIZE] = page_bytes(cid)

    def close(self) -> None:
        """Unmap the region."""
        self.map.close()


def page_bytes(cid: int) -> bytes:
    """The 4 KiB standing for content id ``cid``; id 0 is the zero page."""
    if cid == 0:
        return bytes(PAGE_SIZE)
    words = np.arange(PAGE_SIZE // 8, dtype=np.uint64) * np.uint64(
        0x9E3779B97F4A7C15
    )
    with np.errstate(over="ignore"):
        words ^= np.uint64(cid)
    return words.tobytes()
