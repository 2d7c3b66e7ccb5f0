"""One simulated host: hypervisor memory, guests and the CoW daemon.

``node.host.Host`` has no Ray dependency; ``node.actor.HostActor`` wraps
it as a Ray actor.
"""

from node.guest import GuestConfig
from node.host import Host

__all__ = ["GuestConfig", "Host"]
