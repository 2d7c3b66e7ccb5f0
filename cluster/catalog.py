"""The cluster catalog: which base images and libraries live on which host.

Hosts report a digest after each batch: for every base image, the pages
its guests hold unmodified in their page caches, and for every shared
library (named by a digest of its content, so the same library found in
two images is one entry), its path and the pages mapped. The digests
travel as msgpack. The catalog is what sharing-aware placement reads: a
guest of image X shares most on a host where X is already resident.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgpack


def pack_digest(digest: dict) -> bytes:
    """Encode a host digest for the wire."""
    return msgpack.packb(digest, use_bin_type=True)


def unpack_digest(data: bytes) -> dict:
    """Decode a host digest; library digests are integer keys."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


@dataclass
class Catalog:
    """Resident pages per image and per library, per host."""

    images: dict[str, dict[str, int]] = field(default_factory=dict)
    libraries: dict[int, dict] = field(default_factory=dict)

    @classmethod
    def from_digests(cls, digests: list[bytes | dict]) -> Catalog:
        """Build the catalog from every host's digest."""
        catalog = cls()
        for raw in digests:
            digest = unpack_digest(raw) if isinstance(raw, bytes) else raw
            host = digest["host"]
            for image, pages in digest["images"].items():
                if pages:
                    catalog.images.setdefault(image, {})[host] = pages
            for key, (path, pages) in digest["libraries"].items():
                entry = catalog.libraries.setdefault(
                    int(key), {"path": path, "hosts": {}}
                )
                if pages:
                    entry["hosts"][host] = pages
        return catalog

    def add(self, host: str, image: str, pages: int) -> None:
        """Count ``pages`` more of ``image`` as resident on ``host``."""
        hosts = self.images.setdefault(image, {})
        hosts[host] = hosts.get(host, 0) + pages

    def add_library(
        self, host: str, digest: int, path: str, pages: int
    ) -> None:
        """Count ``pages`` more of a library as mapped on ``host``."""
        entry = self.libraries.setdefault(digest, {"path": path, "hosts": {}})
        entry["hosts"][host] = entry["hosts"].get(host, 0) + pages

    def hosts_with(self, image: str) -> dict[str, int]:
        """Hosts holding pages of ``image``, with how many."""
        return dict(self.images.get(image, {}))

    def to_dict(self, max_libraries: int = 20) -> dict:
        """A JSON-ready view: every image, the most resident libraries."""
        libs = sorted(
            self.libraries.items(),
            key=lambda kv: (-sum(kv[1]["hosts"].values()), kv[1]["path"]),
        )
        return {
            "images": {
                name: {"pages": sum(hosts.values()), "hosts": hosts}
                for name, hosts in sorted(self.images.items())
            },
            "libraries_total": len(self.libraries),
            "libraries": [
                {
                    "path": entry["path"],
                    "digest": f"{key & (2**64 - 1):016x}",
                    "pages": sum(entry["hosts"].values()),
                    "hosts": entry["hosts"],
                }
                for key, entry in libs[:max_libraries]
            ],
        }
