"""Placement policies on synthetic guests, without Ray.

Each synthetic image is a range of content ids; a guest holds a slice of
its image. Guests of one image share, guests of different images do not.
"""

import numpy as np
import pytest

from cluster.placement import (
    GuestDemand,
    Population,
    evaluate,
    footprints,
    place,
    potential_pages,
)
from cluster.scenario import PAGE_SIZE, HostSpec
from dedup.summary import mix64

IMAGE_CONTENTS = 400


def demand(name: str, image: int, pages: int = 1000) -> GuestDemand:
    contents = np.arange(IMAGE_CONTENTS, dtype=np.int64) + image * 1000
    fps = mix64(contents, seed=99)
    return GuestDemand(
        name, f"img{image}", pages, IMAGE_CONTENTS, contents, fps
    )


def population(images: list[int]) -> Population:
    guests = tuple(demand(f"g{i}", im) for i, im in enumerate(images))
    return Population(guests, 1000 * (max(images) + 1), {})


def hosts(n: int, pages: int = 2600) -> tuple[HostSpec, ...]:
    return tuple(HostSpec(f"h{i}", pages * PAGE_SIZE) for i in range(n))


def test_first_fit_and_spread_reserve_whole_guests():
    pop = population([0, 1, 0, 1, 0, 1])
    ff = place("first-fit", pop, hosts(4))
    sp = place("spread", pop, hosts(4))
    assert ff.assignment.tolist() == [0, 0, 1, 1, 2, 2]
    assert sp.assignment.tolist() == [0, 1, 2, 3, 0, 1]


@pytest.mark.parametrize("bits", [None, 0, 1 << 14])
def test_sharing_aware_puts_a_guest_where_its_image_is(bits):
    pop = population([0, 1, 0, 1, 0, 1])
    p = place("sharing-aware", pop, hosts(4), summary_bits=bits, headroom=0)
    row = evaluate(pop, hosts(4), p)
    # A guest sharing nothing starts a group on an empty host; later
    # guests join their image and add 600 pages each: 2200 per host.
    assert p.assignment.tolist() == [0, 1, 0, 1, 0, 1]
    assert row["hosts_needed"] == 2
    assert row["saved_bytes"] == 1600 * PAGE_SIZE
    assert row["potential_bytes"] == 1600 * PAGE_SIZE
    assert row["overfull_hosts"] == 0


def test_sharing_needs_fewer_hosts_than_first_fit():
    pop = population([0, 1] * 6)
    ff = evaluate(pop, hosts(8), place("first-fit", pop, hosts(8)))
    sa = evaluate(pop, hosts(8), place("sharing-aware", pop, hosts(8)))
    off = evaluate(pop, hosts(8), place("offline", pop, hosts(8)))
    assert ff["hosts_needed"] == 6
    assert sa["hosts_needed"] < ff["hosts_needed"]
    assert off["hosts_needed"] <= sa["hosts_needed"]
    assert sa["saved_bytes"] > ff["saved_bytes"]


def test_a_saturated_bloom_filter_overfills_hosts():
    # 8 bits hold nothing useful: every content looks present everywhere.
    pop = population([0, 1, 2, 3] * 3)
    row = evaluate(
        pop,
        hosts(8),
        place("sharing-aware", pop, hosts(8), summary_bits=8, headroom=0),
    )
    assert row["overfull_hosts"] > 0
    exact = evaluate(
        pop,
        hosts(8),
        place("sharing-aware", pop, hosts(8), summary_bits=None, headroom=0),
    )
    assert exact["overfull_hosts"] == 0


def test_guests_that_fit_nowhere_stay_unplaced():
    pop = population([0, 1, 2])
    for policy in ("first-fit", "spread", "sharing-aware", "offline"):
        row = evaluate(pop, hosts(1), place(policy, pop, hosts(1)))
        assert row["guests_placed"] == 2, policy


def test_footprints_and_potential():
    pop = population([0, 0, 1])
    fp = footprints(pop, 2, np.array([0, 0, 1]))
    assert fp.tolist() == [1600, 1000]
    assert potential_pages(pop) == 400


def test_policies_are_deterministic():
    pop = population([0, 1, 2, 0, 1, 2, 0])
    for policy in ("first-fit", "spread", "sharing-aware", "offline"):
        a = place(policy, pop, hosts(5)).assignment
        b = place(policy, pop, hosts(5)).assignment
        assert a.tolist() == b.tolist()


def test_unknown_policy():
    with pytest.raises(ValueError, match="unknown placement policy"):
        place("random", population([0]), hosts(1))


def test_choose_host_for_a_run_never_overcommits():
    from cluster.placement import choose_host

    free = {"h0": 100, "h1": 300, "h2": 200}
    same = {"h2": 3}
    assert choose_host("first-fit", 150, free, same) == "h1"
    assert choose_host("spread", 150, free, same) == "h1"
    assert choose_host("sharing-aware", 150, free, same) == "h2"
    assert choose_host("sharing-aware", 250, free, same) == "h1"
    assert choose_host("spread", 301, free, same) is None
