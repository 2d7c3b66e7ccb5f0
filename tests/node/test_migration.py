"""Migration between two hosts, without Ray: the guest reads the same
memory after the move, the source loses sharing, the destination gains
it, and content the destination holds need not be sent."""

import dataclasses
import pickle

import numpy as np
import pytest

from node.guest import GuestConfig
from node.host import Host
from node.migration import emigrate, immigrate
from tests.node.test_host import configs, images  # noqa: F401

UIDS = {"a": 1, "b": 2}


def two_hosts(images, guest_kind="pv"):  # noqa: F811
    src = Host("src", 0, 4096, seed=5)
    dst = Host("dst", 1, 4096, seed=5)
    cs = configs()
    moving = GuestConfig(
        "mover", 9, "a", pages=512, boot_read_fraction=0.7, kind=guest_kind
    )
    src.boot([cs[0], cs[1], moving], images, UIDS)
    dst.boot(
        [cs[3], dataclasses.replace(cs[0], name="g0b", index=7)], images, UIDS
    )
    src.step(5)
    dst.step(5)
    return src, dst


@pytest.mark.parametrize("kind", ["pv", "hvm"])
def test_guest_reads_the_same_memory_after_moving(images, kind):  # noqa: F811
    src, dst = two_hosts(images, kind)
    guest = src.guest("mover")
    gfns = np.arange(guest.config.pages)
    before = src.memory.read(guest.domid, gfns)
    saved_before = dst.sample()["sharing_mappings"]

    # The guest crosses a process boundary, as it does between actors.
    moving, lost = emigrate(src, "mover")
    moving = pickle.loads(pickle.dumps(moving))
    gained = immigrate(dst, moving)

    arrived = dst.guest("mover")
    assert np.array_equal(dst.memory.read(arrived.domid, gfns), before)
    assert [g.config.name for g in src.guests] == ["g0", "g1"]
    assert lost["sharing_lost_pages"] > 0
    assert gained["sharing_gained_pages"] > 0
    assert dst.sample()["sharing_mappings"] > saved_before
    assert gained["pages_sent"] == np.count_nonzero(before >= 0)
    assert 0 < gained["pages_sent_skipping_known"] < gained["pages_sent"]

    # Both hosts go on running, invariants checked every batch.
    src.step(5)
    dst.step(5)
    assert dst.sample()["guests"] == 3


def test_a_full_destination_refuses(images):  # noqa: F811
    src, _ = two_hosts(images)
    tiny = Host("tiny", 2, 64, seed=5)
    moving, _ = emigrate(src, "mover")
    with pytest.raises(MemoryError, match="tiny"):
        immigrate(tiny, moving)
