"""What a host holds and what a guest will bring, as content ids.

Two views used by sharing-aware placement in a run:

- :func:`host_summary`: a Bloom filter (``dedup.summary``) of the
  content ids of every frame a host uses, encoded with msgpack: what a
  host tells the coordinator about its memory in a few KiB;
- :func:`boot_contents`: the distinct content ids a guest holds right
  after it boots, from the same draw as ``Guest.boot`` (the blocks its
  boot reads) plus its mapped libraries.

Content ids stand for page contents: image blocks with equal bytes have
equal ids on every host, since the coordinator interns every image in
one store; content a host writes fresh is numbered apart on each host,
so it never matches another host's.
"""

from __future__ import annotations

import numpy as np

from dedup.arrays import unique
from dedup.memory import HostMemory
from dedup.summary import ContentSummary
from node.guest import draw_boot_blocks
from node.image import Image


def host_summary(memory: HostMemory, n_bits: int) -> bytes:
    """A msgpack-encoded Bloom filter of the contents of used frames."""
    f = memory.frames
    summary = ContentSummary(n_bits)
    summary.add(unique(f.content[f.count > 0]))
    return summary.to_msgpack()


def boot_blocks(
    image: Image,
    boot_read_fraction: float,
    map_libraries: bool,
    pages: int,
    seed: int,
    index: int,
) -> np.ndarray:
    """Sorted image blocks a guest caches at boot, at most ``pages``.

    The draw is the one ``Guest.boot`` makes first with the guest's
    generator (``[seed, index]``), so both see the same blocks.
    """
    rng = np.random.default_rng([seed, index])
    blocks = draw_boot_blocks(rng, image.n_blocks, boot_read_fraction)
    spans = [
        np.arange(lib.first_block, lib.first_block + lib.n_blocks)
        for lib in (image.libraries() if map_libraries else ())
    ]
    return unique(np.concatenate([blocks, *spans]))[:pages]


def boot_contents(
    image: Image,
    boot_read_fraction: float,
    map_libraries: bool,
    pages: int,
    seed: int,
    index: int,
) -> np.ndarray:
    """Distinct content ids of the blocks a guest caches at boot."""
    blocks = boot_blocks(
        image, boot_read_fraction, map_libraries, pages, seed, index
    )
    return unique(image.block_cids[blocks])
