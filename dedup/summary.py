"""Compact summaries of the content a host holds: Bloom filters.

A host that wants to tell the rest of the cluster what its memory holds
cannot ship every page fingerprint: a 1 GiB host holds 262,144 pages,
2 MiB of 64-bit fingerprints. A :class:`ContentSummary` is a Bloom
filter over fingerprints: ``n_bits`` bits and ``n_hashes`` positions per
key, derived by double hashing from one 64-bit mix of the key. A key
added is always reported present; a key never added is reported present
with a probability that grows with how full the filter is (the false
positive rate, about ``fill ** n_hashes``). Placement reads the summary
to estimate how many of a guest's pages a host already holds; a false
positive makes it count a page as shared that is not.

:class:`SummaryBank` holds one filter per host as the rows of one bit
matrix, so that a guest's keys are tested against every host in one
gather.

Left out: deletion (a counting filter would be needed; hosts rebuild
their summary instead) and filters that grow with their content.
"""

from __future__ import annotations

import msgpack
import numpy as np

_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix64(keys: np.ndarray, seed: int = 0) -> np.ndarray:
    """The splitmix64 finaliser of ``keys`` (any integer dtype)."""
    x = np.asarray(keys).astype(np.uint64, copy=True)
    x += np.uint64(_GOLDEN * (seed + 1) & _MASK64)
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def bit_positions(
    keys: np.ndarray, n_bits: int, n_hashes: int, seed: int = 0
) -> np.ndarray:
    """Bit positions of each key, shape (n_hashes, n_keys)."""
    h1 = mix64(keys, seed)
    h2 = mix64(h1, seed) | np.uint64(1)
    steps = np.arange(n_hashes, dtype=np.uint64)[:, None]
    # uint64 arithmetic wraps, which is what double hashing wants.
    return ((h1[None, :] + steps * h2[None, :]) % np.uint64(n_bits)).astype(
        np.int64
    )


class ContentSummary:
    """A Bloom filter of page fingerprints."""

    def __init__(self, n_bits: int, n_hashes: int = 4, seed: int = 0) -> None:
        if n_bits < 8 or n_hashes < 1:
            raise ValueError(
                f"a summary needs at least 8 bits and 1 hash, got "
                f"{n_bits} bits and {n_hashes} hashes"
            )
        self.n_bits = n_bits
        self.n_hashes = n_hashes
        self.seed = seed
        self.bits = np.zeros(n_bits, dtype=bool)

    def add(self, keys: np.ndarray) -> None:
        """Add fingerprints."""
        pos = bit_positions(keys, self.n_bits, self.n_hashes, self.seed)
        self.bits[pos.ravel()] = True

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Whether each key may have been added (never a false no)."""
        pos = bit_positions(keys, self.n_bits, self.n_hashes, self.seed)
        return self.bits[pos].all(axis=0)

    @property
    def fill(self) -> float:
        """Fraction of bits set."""
        return float(np.count_nonzero(self.bits)) / self.n_bits

    @property
    def false_positive_rate(self) -> float:
        """Expected chance that a key never added is reported present."""
        return self.fill**self.n_hashes

    def to_msgpack(self) -> bytes:
        """The summary as it travels: parameters and packed bits."""
        return msgpack.packb(
            {
                "n_bits": self.n_bits,
                "n_hashes": self.n_hashes,
                "seed": self.seed,
                "bits": np.packbits(self.bits).tobytes(),
            },
            use_bin_type=True,
        )

    @classmethod
    def from_msgpack(cls, data: bytes) -> ContentSummary:
        """Decode a summary made by :meth:`to_msgpack`."""
        fields = msgpack.unpackb(data, raw=False)
        summary = cls(fields["n_bits"], fields["n_hashes"], fields["seed"])
        packed = np.frombuffer(fields["bits"], dtype=np.uint8)
        summary.bits = np.unpackbits(packed)[: summary.n_bits].astype(bool)
        return summary


class SummaryBank:
    """One Bloom filter per host, tested together.

    The filters are stored transposed and packed: row ``b`` holds bit
    ``b`` of every host's filter, eight hosts to a byte, so that testing
    a key against all hosts gathers ``n_hashes`` short rows and ANDs them.
    """

    def __init__(
        self, n_hosts: int, n_bits: int, n_hashes: int = 4, seed: int = 0
    ) -> None:
        self.n_hosts = n_hosts
        self.n_bits = n_bits
        self.n_hashes = n_hashes
        self.seed = seed
        self.packed = np.zeros((n_bits, -(-n_hosts // 8)), dtype=np.uint8)

    def positions(self, keys: np.ndarray) -> np.ndarray:
        """Bit positions of ``keys``, to reuse across calls."""
        return bit_positions(keys, self.n_bits, self.n_hashes, self.seed)

    def add(self, host: int, keys: np.ndarray, pos=None) -> None:
        """Add fingerprints (or their ``pos``) to one host's filter."""
        pos = self.positions(keys) if pos is None else pos
        self.packed[pos.ravel(), host // 8] |= np.uint8(1 << (host % 8))

    def counts(self, keys: np.ndarray, pos=None) -> np.ndarray:
        """Per host, how many of ``keys`` its filter reports present."""
        if keys.size == 0:
            return np.zeros(self.n_hosts, dtype=np.int64)
        pos = self.positions(keys) if pos is None else pos
        hits = np.bitwise_and.reduce(self.packed[pos], axis=0)
        per_host = np.unpackbits(hits, axis=1, bitorder="little")
        return per_host.sum(axis=0, dtype=np.int64)[: self.n_hosts]

    @property
    def bits(self) -> np.ndarray:
        """The filters as a (hosts, bits) boolean matrix."""
        unpacked = np.unpackbits(self.packed, axis=1, bitorder="little")
        return unpacked[:, : self.n_hosts].T.astype(bool)

    def summary(self, host: int) -> ContentSummary:
        """One host's filter as a standalone summary."""
        out = ContentSummary(self.n_bits, self.n_hashes, self.seed)
        column = self.packed[:, host // 8] >> np.uint8(host % 8)
        out.bits = (column & np.uint8(1)).astype(bool)
        return out
