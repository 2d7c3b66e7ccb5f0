"""Content views for placement: a guest's boot blocks drawn as Guest.boot
draws them, and a host's Bloom filter summary of its frames."""

import numpy as np

from dedup.summary import ContentSummary
from node.content import boot_blocks, host_summary
from node.host import Host
from tests.node.test_host import configs, images  # noqa: F401


def test_boot_blocks_are_the_blocks_a_guest_caches_at_boot(images):  # noqa: F811
    host = Host("h", 0, 4096, seed=5)
    cs = configs()
    host.boot(cs, images, {"a": 1, "b": 2})
    for config, guest in zip(cs, host.guests, strict=True):
        expected = boot_blocks(
            images[config.image],
            config.boot_read_fraction,
            config.map_libraries,
            config.pages,
            5,
            config.index,
        )
        cached = np.flatnonzero(guest.block_gfn >= 0)
        assert np.array_equal(cached, expected), config.name


def test_host_summary_holds_every_content_in_use(images):  # noqa: F811
    host = Host("h", 0, 4096, seed=5)
    host.boot(configs(), images, {"a": 1, "b": 2})
    host.step(3)
    summary = ContentSummary.from_msgpack(host_summary(host.memory, 1 << 16))
    f = host.memory.frames
    assert summary.contains(f.content[f.count > 0]).all()
    assert summary.false_positive_rate < 0.01
