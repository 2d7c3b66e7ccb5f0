"""Bloom filter summaries: no false negatives, a measured false positive
rate close to the formula, and a msgpack round trip."""

import numpy as np

from dedup.summary import ContentSummary, SummaryBank


def keys(seed: int, n: int) -> np.ndarray:
    return (
        np.random.default_rng(seed)
        .integers(0, 2**63, n, dtype=np.int64)
        .astype(np.uint64)
    )


def test_added_keys_are_always_present():
    s = ContentSummary(1 << 12)
    added = keys(1, 2000)
    s.add(added)
    assert s.contains(added).all()


def test_false_positive_rate_matches_fill():
    s = ContentSummary(1 << 16, n_hashes=4)
    s.add(keys(1, 8000))
    measured = s.contains(keys(2, 50_000)).mean()
    assert abs(measured - s.false_positive_rate) < 0.01
    assert 0.0 < measured < 0.1


def test_msgpack_round_trip_is_compact():
    s = ContentSummary(1 << 15, seed=7)
    s.add(keys(3, 1000))
    data = s.to_msgpack()
    back = ContentSummary.from_msgpack(data)
    assert len(data) < (1 << 15) // 8 + 64
    assert (back.bits == s.bits).all()
    assert back.contains(keys(3, 1000)).all()


def test_bank_counts_every_host_at_once():
    bank = SummaryBank(3, 1 << 14)
    a, b = keys(4, 500), keys(5, 500)
    bank.add(0, a)
    bank.add(2, np.concatenate([a[:100], b]))
    counts = bank.counts(a)
    assert counts[0] == 500
    assert counts[1] == 0
    assert 100 <= counts[2] < 110
    assert (bank.summary(2).bits == bank.bits[2]).all()
