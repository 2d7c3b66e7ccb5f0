"""Duplicate-finding strategies in scenario files, and the named ones.

A ``[[hosts]]`` entry may carry a ``detect`` table choosing its
``dedup.strategy.Strategy``; without one a host uses hints only::

    [hosts.detect]
    hints = false
    ksm = { pages_to_scan = 100, sleep_millisecs = 20 }
    sampling = { pages_per_tick = 4096 }
    blocks = { pages_per_tick = 8192, block_pages = 512 }

A scanner is on when its table is present, with the defaults of
``KsmParams``, ``SamplingParams`` and ``BlockParams`` for missing keys.
``NAMED`` holds the strategies ``cowsim compare`` runs side by side.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dedup.blocks import BlockParams
from dedup.ksm import KsmParams
from dedup.sampling import SamplingParams
from dedup.strategy import Strategy

_SCANNERS = {
    "ksm": KsmParams,
    "sampling": SamplingParams,
    "blocks": BlockParams,
}
DETECT_KEYS = ("hints", *_SCANNERS)

NAMED: dict[str, Strategy] = {
    "hints": Strategy(),
    "ksm": Strategy(hints=False, ksm=KsmParams()),
    "sampling": Strategy(hints=False, sampling=SamplingParams()),
    "blocks": Strategy(hints=False, blocks=BlockParams()),
    "hints+ksm": Strategy(ksm=KsmParams()),
}
"""Strategies compared by default: each detector alone, then hints with
the kernel's scanner as a safety net."""


def parse_strategy(context: Any, value: Any, key: str) -> Strategy:
    """Check a ``detect`` table (``context`` is the scenario parser's)."""
    table = context.as_table(value, key, DETECT_KEYS)
    hints = context.as_bool(table.get("hints", True), f"{key}.hints")
    scanners = {}
    for name, params in _SCANNERS.items():
        if name not in table:
            continue
        where = f"{key}.{name}"
        fields = {f.name: f for f in dataclasses.fields(params)}
        raw = context.as_table(table[name], where, tuple(fields))
        values = {}
        for field, v in raw.items():
            if fields[field].type in (bool, "bool"):
                values[field] = context.as_bool(v, f"{where}.{field}")
            else:
                values[field] = context.as_int(v, f"{where}.{field}", 1)
        try:
            scanners[name] = params(**values)
        except ValueError as error:
            context.fail(where, str(error))
    return Strategy(hints=hints, **scanners)


def dump_strategy(strategy: Strategy) -> str:
    """The ``[hosts.detect]`` table of a strategy, in TOML."""
    lines = ["[hosts.detect]", f"hints = {str(strategy.hints).lower()}"]
    for name in _SCANNERS:
        params = getattr(strategy, name)
        if params is None:
            continue
        items = ", ".join(
            f"{k} = {str(v).lower() if isinstance(v, bool) else v}"
            for k, v in dataclasses.asdict(params).items()
        )
        lines.append(f"{name} = {{ {items} }}")
    return "\n".join(lines) + "\n"
