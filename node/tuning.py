"""Allocator settings for a process that runs a host's engine.

The engine allocates and frees arrays of tens to hundreds of MB for every
batch of hints, faults and scans. With the defaults, glibc hands each
large array back to the kernel when it is freed and numpy asks for
transparent huge pages on every new one, so each batch pays again for
page faults and huge-page compaction. Keeping freed memory in the heap
for the next batch, and leaving huge pages to the kernel's default,
measured 1.3 to 1.7 times faster on hint batches of 4 Mi and 16 Mi pages
(``cowsim bench``). The process keeps its peak memory instead of
returning it between batches, which a host actor would need again at
the next tick anyway.

Only glibc is tuned; elsewhere (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def tune_allocator() -> bool:
    """Keep freed memory for reuse and skip huge-page advice; return
    whether the allocator could be tuned."""
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # numpy < 2 keeps it elsewhere; leave it be
        _set_madvise_hugepage = None
    if _set_madvise_hugepage is not None:
        _set_madvise_hugepage(False)
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.debug("no mallopt in %s: allocator left as it is", name)
        return False
    # No mmap for large blocks (they come from the heap and go back to
    # it), and no trimming of the heap's top below 2 GiB.
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    return bool(ok)
