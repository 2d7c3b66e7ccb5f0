"""Writing a scenario back as TOML, in its resolved form.

One entry per host and guest (each with ``count = 1``), image paths
expanded, every default written out: the file loads back to an equal
scenario, and a results directory keeps it beside the run it describes.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Any

from cluster.fields import format_size
from cluster.strategies import dump_strategy

if TYPE_CHECKING:
    from cluster.scenario import GuestSpec, HostSpec, ImageSpec, Scenario

# The run's settings, in the order a scenario file gives them.
_RUN_KEYS = ("name", "seed", "ticks", "tick_seconds", "batch_ticks")


def dump_scenario(scenario: Scenario) -> str:
    """Write ``scenario`` as TOML that loads back to an equal scenario.

    The text is the resolved form: one entry per host and guest (each with
    ``count = 1``), image paths expanded and every default written out.
    """
    blocks = [_dump_run(scenario)]
    blocks += [_dump_host(host) for host in scenario.hosts]
    blocks += [_dump_image(image) for image in scenario.images]
    blocks += [_dump_guest(guest) for guest in scenario.guests]
    blocks += [
        _dump_table("[[failures]]", dataclasses.asdict(failure))
        for failure in scenario.failures
    ]
    blocks += [
        _dump_table("[[migrations]]", dataclasses.asdict(migration))
        for migration in scenario.migrations
    ]
    return "\n".join(blocks)


def _dump_run(scenario: Scenario) -> str:
    settings = {key: getattr(scenario, key) for key in _RUN_KEYS}
    settings["repayment_invariant"] = scenario.repayment_invariant
    settings["migration_policy"] = scenario.migration_policy
    settings["placement_policy"] = scenario.placement_policy
    return _dump_table(
        "# A cowsim scenario, resolved: one entry per host and guest,\n"
        "# image paths expanded and every default written out.",
        settings,
    )


def _dump_host(host: HostSpec) -> str:
    memory = format_size(host.memory_bytes)
    fields = {"name": host.name, "count": 1, "memory": memory}
    return _dump_table("[[hosts]]", fields) + dump_strategy(host.strategy)


def _dump_image(image: ImageSpec) -> str:
    # Braces in a real path are doubled so that they are not read back as
    # placeholders.
    paths = [p.replace("{", "{{").replace("}", "}}") for p in image.paths]
    fields = {"paths": paths, "exclude": list(image.exclude)}
    fields["max_size"] = format_size(image.max_bytes)
    return _dump_table(f"[images.{image.name}]", fields)


def _dump_guest(guest: GuestSpec) -> str:
    fields = {"name": guest.name, "count": 1} | dataclasses.asdict(guest)
    if not guest.clone_of:
        del fields["clone_of"]
    fields["memory_bytes"] = format_size(guest.memory_bytes)
    fields = {key.removesuffix("_bytes"): v for key, v in fields.items()}
    workload = _dump_table("[guests.workload]", fields.pop("workload"))
    return _dump_table("[[guests]]", fields) + "\n" + workload


def _dump_table(header: str, fields: dict[str, Any]) -> str:
    lines = [header]
    lines += [f"{key} = {_dump_value(value)}" for key, value in fields.items()]
    return "\n".join(lines) + "\n"


def _dump_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _dump_str(value)
    if not value:
        return "[]"
    items = "".join(f"    {_dump_value(item)},\n" for item in value)
    return f"[\n{items}]"


def _dump_str(text: str) -> str:
    # A TOML basic string escapes quotes, backslashes and control
    # characters; everything else, non-ASCII included, is written as is.
    def escape(match: re.Match[str]) -> str:
        char = match.group(0)
        if char in '"\\':
            return "\\" + char
        return f"\\u{ord(char):04x}"

    return '"' + _NEEDS_ESCAPE.sub(escape, text) + '"'


_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f\x7f]')
