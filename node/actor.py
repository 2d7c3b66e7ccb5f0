"""The Ray actor that runs one host: a thin adapter around ``node.host``.

Each method forwards to the host. Images arrive as Ray object references
resolved by Ray before the call, so every host on a node reads the same
copy from the object store.
"""

from __future__ import annotations

import msgpack
import ray

from dedup.strategy import Strategy
from node.content import host_summary
from node.guest import GuestConfig
from node.host import Host
from node.image import Image
from node.migration import GuestImage, emigrate, immigrate
from node.tuning import tune_allocator


@ray.remote
class HostActor:
    """One physical host, as a Ray actor."""

    def __init__(
        self,
        name: str,
        index: int,
        memory_pages: int,
        seed: int,
        tick_seconds: float,
        repayment_invariant: bool = True,
        strategy: Strategy | None = None,
    ) -> None:
        tune_allocator()
        self.host = Host(
            name,
            index,
            memory_pages,
            seed,
            tick_seconds,
            repayment_invariant,
            strategy,
        )

    def boot(
        self,
        configs: list[GuestConfig],
        images: dict[str, Image],
        image_uids: dict[str, int],
    ) -> dict:
        """Boot the guests placed here; return the first sample."""
        return self.host.boot(configs, images, image_uids)

    def step(self, n_ticks: int) -> list[dict]:
        """Run ``n_ticks`` ticks; return one sample per tick."""
        return self.host.step(n_ticks)

    def digest(self) -> bytes:
        """Resident images and libraries, msgpack-encoded."""
        return msgpack.packb(self.host.digest(), use_bin_type=True)

    def events(self) -> list[dict]:
        """Unsatisfied faults and other recorded events."""
        return self.host.events

    @ray.method(num_returns=2)
    def emigrate(self, name: str) -> tuple[GuestImage, dict]:
        """Stop guest ``name`` and hand it over; also return what the
        source lost. The guest travels as a Ray object."""
        return emigrate(self.host, name)

    def immigrate(self, moving: GuestImage) -> dict:
        """Start a guest handed over by another host."""
        return immigrate(self.host, moving)

    def summary(self, n_bits: int) -> bytes:
        """A Bloom filter of the contents this host's frames hold,
        msgpack-encoded (see ``node.content``)."""
        return host_summary(self.host.memory, n_bits)

    def node_id(self) -> str:
        """The Ray node this host runs on."""
        return ray.get_runtime_context().get_node_id()
