"""Guests forked from a stub domain.

A stub is a guest booted like any other, then paused and write
protected: it never runs its workload again and its frames stay as they
are. A clone is a new domain whose every populated GFN maps the stub's
frame for the same GFN, so all its memory starts shared; it inherits the
stub's workload state (page cache, anonymous pages, free list) and then
runs with a generator of its own, so that clones diverge from the stub
and from each other as they write. Sharing made by forking is counted
under its own source, ``fork`` (``FORK``), apart from the hint sources.

How a clone's frames are made: the model populates the clone, writes the
stub's contents into it and merges each pair with ``share_mfns``, the
same verified hypercall the daemon uses. A real fork maps the stub's
frames directly; the model needs one clone's worth of free frames for an
instant, which the no-overcommit placement guarantees.

Left out: the stub's own memory cost is not amortised in any report,
and clones do not inherit bonus pages (the stub has none).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np

from dedup.hints import SOURCES
from node.guest import Guest, GuestConfig

if TYPE_CHECKING:
    from node.host import Host

FORK = len(SOURCES)
"""Frame source index for sharing made by forking, after the hint
sources."""


def make_stub(host: Host, stub: Guest) -> None:
    """Pause a booted guest and write-protect its frames."""
    stub.paused = True
    p2m = host.memory.domain_p2m(stub.domid)
    host.memory.mark_page_ro(p2m[p2m >= 0])


def fork(host: Host, stub: Guest, config: GuestConfig, domid: int) -> Guest:
    """Create ``config``'s guest as a clone of ``stub`` on ``host``."""
    memory = host.memory
    stub_p2m = memory.domain_p2m(stub.domid)
    present = np.flatnonzero(stub_p2m >= 0)
    memory.create_domain(domid, stub_p2m.size, populated=0)
    memory.populate(domid, present)
    memory.write(domid, present, memory.read(stub.domid, present))
    sources = stub_p2m[present]
    clients = memory.domain_p2m(domid)[present]
    memory.mark_page_ro(np.concatenate([sources, clients]))
    memory.share_mfns(sources, clients, FORK)

    # The image is shared by reference; everything else is the clone's.
    clone = copy.deepcopy(stub, memo={id(stub.image): stub.image})
    clone.domid = domid
    clone.config = config
    clone.rng = np.random.default_rng([host.seed, config.index])
    clone.bonus_rng = np.random.default_rng([host.seed, config.index, 1])
    clone.paused = False
    clone.refaults = 0
    clone.hints = []
    return clone
