"""Which guests to migrate, and where: the coordinator's policies.

Decisions are pure functions of what the coordinator knows between two
batches: the placement (guest -> host), each guest's memory, which
hosts are up and the newest sample of each host. The coordinator moves
the guests (``node.migration`` does the move on the hosts) and records
what each move cost and gained.

- ``consolidate``: empty one host per batch boundary into the others
  when every guest of it fits elsewhere, to free hosts. The host
  emptied is the one with least memory reserved (ties: the last in
  host order); each of its guests goes to the host that runs most
  guests of its image, then the fullest, that has room.
- ``rebalance``: a host runs short when fewer than
  ``SHORT_FRACTION`` of its frames are free (bonus pages and growth
  eat them); its largest guest moves to the live host with most free
  frames that has room for it.

Room is always reserved memory: a guest's memory is reserved whole on
its host, as at placement, so a move never overcommits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cluster.scenario import GuestSpec, HostSpec

SHORT_FRACTION = 0.10
"""A host with fewer free frames than this share of its memory is short."""

Move = tuple[str, str]  # (guest, destination host)


def reserved_bytes(
    guests: Sequence[GuestSpec], placement: Mapping[str, str]
) -> dict[str, int]:
    """Memory reserved on each host by the guests placed there."""
    out: dict[str, int] = {}
    for g in guests:
        host = placement.get(g.name)
        if host:
            out[host] = out.get(host, 0) + g.memory_bytes
    return out


def consolidate(
    hosts: Sequence[HostSpec],
    up: Sequence[bool],
    guests: Sequence[GuestSpec],
    placement: Mapping[str, str],
) -> list[Move]:
    """Moves that empty one host into the others, or none."""
    reserved = reserved_bytes(guests, placement)
    used = [
        h
        for h, alive in zip(hosts, up, strict=True)
        if alive and reserved.get(h.name)
    ]
    if len(used) < 2:
        return []
    order = sorted(
        range(len(used)), key=lambda i: (reserved[used[i].name], -i)
    )
    source = used[order[0]]
    room = {
        h.name: h.memory_bytes - reserved[h.name]
        for h in used
        if h is not source
    }
    moves = []
    for g in guests:
        if placement.get(g.name) != source.name:
            continue
        fits = [name for name, free in room.items() if free >= g.memory_bytes]
        if not fits:
            return []
        same = _image_counts(guests, placement, g.image)
        best = max(
            fits, key=lambda n: (same.get(n, 0), -room[n], -_index(hosts, n))
        )
        room[best] -= g.memory_bytes
        moves.append((g.name, best))
    return moves


def rebalance(
    hosts: Sequence[HostSpec],
    up: Sequence[bool],
    guests: Sequence[GuestSpec],
    placement: Mapping[str, str],
    samples: Sequence[dict],
) -> list[Move]:
    """One move off each host short of free frames, where one fits."""
    reserved = reserved_bytes(guests, placement)
    free = {
        h.name: s["machine_bytes"] - s["machine_bytes_used"]
        for h, s, alive in zip(hosts, samples, up, strict=True)
        if alive
    }
    room = {
        h.name: h.memory_bytes - reserved.get(h.name, 0)
        for h, alive in zip(hosts, up, strict=True)
        if alive
    }
    moves = []
    for h in hosts:
        if h.name not in free or free[h.name] >= SHORT_FRACTION * (
            h.memory_bytes
        ):
            continue
        mine = [g for g in guests if placement.get(g.name) == h.name]
        if not mine:
            continue
        g = max(mine, key=lambda g: g.memory_bytes)
        targets = [
            n for n in room if n != h.name and room[n] >= g.memory_bytes
        ]
        if not targets:
            continue
        best = max(targets, key=lambda n: (free[n], -_index(hosts, n)))
        room[best] -= g.memory_bytes
        room[h.name] += g.memory_bytes
        free[best] -= g.memory_bytes
        moves.append((g.name, best))
    return moves


def _image_counts(
    guests: Sequence[GuestSpec], placement: Mapping[str, str], image: str
) -> dict[str, int]:
    counts: dict[str, int] = {}
    for g in guests:
        host = placement.get(g.name)
        if host and g.image == image:
            counts[host] = counts.get(host, 0) + 1
    return counts


def _index(hosts: Sequence[HostSpec], name: str) -> int:
    return next(i for i, h in enumerate(hosts) if h.name == name)
