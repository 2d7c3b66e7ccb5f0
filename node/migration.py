"""Moving a running guest from one host to another.

The source host stops the guest, reads the content of every populated
GFN, destroys the domain (its frames go back to the free pool and the
frames it shared lose a mapping) and hands over a :class:`GuestImage`:
the guest's workload state and its page contents. The destination
creates a domain, populates and writes those GFNs, and re-announces
them to its CoW daemon as hints, as the guest would have: clean page
cache pages as disk hints, mapped library pages as library hints and
zero pages as zero hints (a migration stream knows its zero pages).
The daemon verifies and shares them like any other hint.

Accounting: the sharing lost at the source and gained at the destination
are the change in each host's sharing mappings (frames saved); pages
sent is the number of populated pages, and pages sent when skipping
content is the number whose content the destination holds nowhere, the
pages a content-aware transfer would still have to send.

Left out: pre-copy rounds and dirty pages (the guest is stopped while
it moves, between two ticks), and network time. Bonus pages are given
back at the source before the move; the destination lends again from
its own free pool. A guest that broke its repayment promise keeps its
pinned pages as ordinary memory at the destination.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dedup.content import ZERO_CONTENT
from dedup.hints import (
    DISK,
    LIBRARY,
    ZERO,
    ZERO_KEY,
    disk_keys,
    library_keys,
)
from node.guest import R_CACHE, R_MAPPED, Guest

if TYPE_CHECKING:
    from node.host import Host


@dataclass
class GuestImage:
    """A stopped guest in transit: its state and its page contents."""

    guest: Guest
    contents: np.ndarray
    """Content id per GFN, -1 where unpopulated."""


def emigrate(host: Host, name: str) -> tuple[GuestImage, dict]:
    """Stop guest ``name`` on ``host`` and take it off; return the
    guest in transit and what the source lost."""
    guest = host.guest(name)
    before = host.memory.sharing()["sharing_mappings"]
    bonus = host.repayment.bonus.get(guest.domid, 0)
    if bonus:
        back = host.repayment.give_back(guest.domid, bonus)
        guest.lose(back, reclaimed=False)
    n = host.memory.domain_pages(guest.domid)
    contents = host.memory.read(guest.domid, np.arange(n, dtype=np.int64))
    host.memory.destroy_domain(guest.domid)
    host.repayment.forget(guest.domid)
    host.guests.remove(guest)
    guest.hints = []
    host.memory.check()
    after = host.memory.sharing()["sharing_mappings"]
    stats = {
        "guest": name,
        "from": host.name,
        "pages": int(np.count_nonzero(contents >= 0)),
        "sharing_lost_pages": before - after,
        "source": host.sample(),
    }
    return GuestImage(guest, contents), stats


def immigrate(host: Host, moving: GuestImage) -> dict:
    """Start a guest in transit on ``host``; return what it gained."""
    guest, contents = moving.guest, moving.contents
    # Arrays that came through Ray's object store are read-only views.
    for name, value in vars(guest).items():
        if isinstance(value, np.ndarray) and not value.flags.writeable:
            setattr(guest, name, value.copy())
    present = np.flatnonzero(contents >= 0)
    if present.size > host.memory.frames.free_frames:
        raise MemoryError(
            f"{host.name}: {present.size} pages to receive, "
            f"{host.memory.frames.free_frames} frames free"
        )
    f = host.memory.frames
    held = f.content[f.count > 0]
    known = np.isin(contents[present], held)
    before = host.memory.sharing()["sharing_mappings"]

    guest.domid = host.new_domid()
    guest.image = host.images[guest.image.name]
    host.memory.create_domain(guest.domid, contents.size, populated=0)
    host.memory.populate(guest.domid, present)
    host.memory.write(guest.domid, present, contents[present])
    host.guests.append(guest)
    _rehint(guest, contents)
    host._share()
    host._adjust_bonus()
    host.memory.check()

    after = host.memory.sharing()["sharing_mappings"]
    return {
        "to": host.name,
        "pages_sent": int(present.size),
        "pages_sent_skipping_known": int(np.count_nonzero(~known)),
        "sharing_gained_pages": after - before,
        "destination": host.sample(),
    }


def _rehint(guest: Guest, contents: np.ndarray) -> None:
    """Hints for what the destination's daemon can share."""
    pages = guest.config.pages
    role = guest.role[:pages]
    cache = np.flatnonzero((role == R_CACHE) | (role == R_MAPPED))
    blocks = guest.cache_block[cache]
    clean = (blocks >= 0) & ~guest.modified[np.maximum(blocks, 0)]
    cache, blocks = cache[clean], blocks[clean]
    if guest.pv and guest.config.map_libraries:
        for lib in guest.image.libraries():
            end = lib.first_block + lib.n_blocks
            inside = (blocks >= lib.first_block) & (blocks < end)
            page = blocks[inside] - lib.first_block
            keys = library_keys(lib.digest, page)
            guest._hint(cache[inside], keys, LIBRARY)
            cache, blocks = cache[~inside], blocks[~inside]
    guest._hint(cache, disk_keys(guest.image_uid, blocks), DISK)
    zero = np.flatnonzero(contents[:pages] == ZERO_CONTENT)
    guest._hint(zero, np.full(zero.size, ZERO_KEY), ZERO)
