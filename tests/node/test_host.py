"""A host without Ray: guests, daemon, sharing invisible to guests."""

import numpy as np
import pytest

from dedup.content import ContentStore
from node.guest import GuestConfig
from node.host import Host
from node.image import load_image
from tests.cluster.test_run import write_tree


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("img")
    write_tree(root / "a", seed=1)
    write_tree(root / "b", seed=2)
    store = ContentStore()
    return {
        "a": load_image("a", [str(root / "a")], store),
        "b": load_image("b", [str(root / "b")], store),
    }


def configs():
    kw = dict(
        pages=512,
        read_pages_per_tick=8,
        disk_write_pages_per_tick=2,
        anon_write_pages_per_tick=24,
        free_pages_per_tick=8,
        boot_read_fraction=0.7,
    )
    return [
        GuestConfig("g0", 0, "a", **kw),
        GuestConfig("g1", 1, "a", **kw),
        GuestConfig("g2", 2, "b", kind="hvm", **kw),
        GuestConfig("g3", 3, "b", **kw),
    ]


def run(images, share: bool, ticks: int = 30) -> Host:
    host = Host("h", 0, 4096, seed=5)
    if not share:
        host.daemon.process = lambda batch: None
    host.boot(configs(), images, {"a": 1, "b": 2})
    host.step(ticks)
    return host


def test_sharing_is_invisible_to_guests(images):
    shared = run(images, share=True)
    plain = run(images, share=False)
    assert shared.sample()["saved_bytes"] > 0
    assert plain.sample()["saved_bytes"] == 0
    for g_shared, g_plain in zip(shared.guests, plain.guests, strict=True):
        gfns = np.arange(g_shared.config.pages)
        assert np.array_equal(
            shared.memory.read(g_shared.domid, gfns),
            plain.memory.read(g_plain.domid, gfns),
        )
    shared.memory.check()


def test_sample_is_consistent(images):
    host = run(images, share=True, ticks=10)
    s = host.sample()
    assert s["guest_bytes"] - s["machine_bytes_used"] == s["saved_bytes"]
    assert s["saved_bytes"] <= s["potential_bytes"]
    assert s["saved_bytes"] == sum(
        s[f"saved_{k}_bytes"] for k in ("zero", "disk", "library")
    )
    assert s["hints_library_shared"] > 0  # g0 and g1, g3 share libcommon
    assert s["cow_faults"] == sum(
        s[f"faults_{k}"] for k in ("last", "nocopy", "copy", "unsatisfied")
    )


def test_hvm_guest_sends_no_library_hints(images):
    host = Host("h", 0, 4096, seed=5)
    hvm = [c for c in configs() if c.kind == "hvm"]
    host.boot(hvm, images, {"a": 1, "b": 2})
    assert host.sample()["hints_library_first"] == 0
    assert host.sample()["hints_disk_first"] > 0


def test_digest_lists_resident_images_and_libraries(images):
    host = run(images, share=True, ticks=2)
    digest = host.digest()
    assert set(digest["images"]) == {"a", "b"}
    ((path, pages),) = {tuple(v) for v in digest["libraries"].values()}
    assert path == "lib/libcommon.so.1" and pages > 0
