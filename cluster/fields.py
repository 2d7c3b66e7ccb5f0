"""Checked values of a scenario file: sizes, types, keys and paths.

:class:`Context` names the file being read in every error and anchors its
relative paths; its ``as_*`` methods check one value each. Sizes are
binary (``"2GiB"``) and whole pages. Paths may hold placeholders for
where this Python installation keeps its files (``{stdlib}``,
``{package:NAME}``), so that one scenario file works on any machine.
Every error is a :class:`ScenarioError` of one line,
``"<file>: <key>: <what is wrong>"``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import sys
import sysconfig
import tomllib
from fractions import Fraction
from typing import Any, NoReturn

from dedup.errors import CowsimError

PAGE_SIZE = 4096
"""Bytes per page; every memory size in a scenario is a multiple of it."""


_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")
_UNITS = {"": 1, "B": 1} | {
    unit: 1024**power
    for power, letter in enumerate("KMGT", start=1)
    for unit in (letter, letter + "iB")
}
_SIZE_HINT = "use a number and a unit B, KiB, MiB, GiB or TiB"
_PLACEHOLDERS = "{stdlib}, {purelib}, {platlib}, {prefix} or {package:NAME}"
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


class ScenarioError(CowsimError):
    """A scenario file is missing, malformed or describes an impossible run.

    The message is one line naming the file and the dotted key at fault.
    """


def parse_size(value: int | str, where: str) -> int:
    """Return a memory size in bytes: a positive multiple of PAGE_SIZE.

    ``value`` is an integer number of bytes or a string such as ``"2GiB"``,
    ``"512 MiB"`` or ``"1.5G"``: a decimal number and a binary unit among
    B, KiB, MiB, GiB, TiB and their one-letter forms K, M, G, T. ``where``
    starts the error message, e.g. ``"run.toml: hosts[0].memory"``.
    """
    nbytes = _size_bytes(value, where)
    if nbytes <= 0:
        raise_error(f"{where}: size must be positive, got {value!r}")
    if nbytes % PAGE_SIZE:
        raise_error(
            f"{where}: size {value!r} is not a multiple of {PAGE_SIZE}"
        )
    return nbytes


def format_size(nbytes: int) -> str:
    """Write ``nbytes`` with the largest binary unit that divides it."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if nbytes and nbytes % _UNITS[unit] == 0:
            return f"{nbytes // _UNITS[unit]}{unit}"
    return f"{nbytes}B"


def raise_error(message: str) -> NoReturn:
    raise ScenarioError(" ".join(message.splitlines()))


def _size_bytes(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise_error(f"{where}: expected a size, got {describe(value)}")
    if isinstance(value, int):
        return value
    match = _SIZE.fullmatch(value)
    if match is None or match.group(2) not in _UNITS:
        raise_error(f"{where}: cannot parse size {value!r}: {_SIZE_HINT}")
    exact = Fraction(match.group(1)) * _UNITS[match.group(2)]
    if exact.denominator != 1:
        raise_error(f"{where}: size {value!r} is not a whole number of bytes")
    return int(exact)


def describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    label = _TYPE_NAMES.get(type(value), type(value).__name__)
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{label} {text}"


_TYPE_NAMES = {int: "integer", float: "float", str: "string"}
_TYPE_NAMES.update({list: "array", dict: "table"})


def join_key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


_Keys = tuple[str, ...]


class Context:
    """The file being read: names it in errors, anchors relative paths.

    The ``as_*`` methods check one value and return it; ``key`` is its
    dotted path, as printed in the error.
    """

    def __init__(self, file: str, base_dir: str) -> None:
        self.file = file
        self.base_dir = base_dir

    def fail(self, key: str, what: str) -> NoReturn:
        raise_error(f"{self.file}: {key}: {what}")

    def as_int(self, value: Any, key: str, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"expected an integer, got {describe(value)}")
        if value < minimum:
            self.fail(key, f"must be >= {minimum}, got {value}")
        return value

    def as_float(self, value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(key, f"expected a number, got {describe(value)}")
        if not math.isfinite(value):
            self.fail(key, f"must be finite, got {value}")
        return float(value)

    def as_bool(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            got = describe(value)
            self.fail(key, f"expected true or false, got {got}")
        return value

    def as_str(self, value: Any, key: str) -> str:
        if not isinstance(value, str):
            self.fail(key, f"expected a string, got {describe(value)}")
        if not value:
            self.fail(key, "must not be empty")
        return value

    def as_str_list(self, value: Any, key: str) -> list[str]:
        if not isinstance(value, list):
            self.fail(key, f"expected an array, got {describe(value)}")
        return [
            self.as_str(item, f"{key}[{index}]")
            for index, item in enumerate(value)
        ]

    def as_size(self, value: Any, key: str) -> int:
        return parse_size(value, f"{self.file}: {key}")

    def as_table(
        self, value: Any, key: str, allowed: _Keys, required: _Keys = ()
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(key, f"expected a table, got {describe(value)}")
        for name in value:
            if name not in allowed:
                self.fail(join_key(key, name), "unknown key")
        for name in required:
            if name not in value:
                self.fail(join_key(key, name), "missing required key")
        return value


def read_toml(context: Context) -> dict[str, Any]:
    try:
        with open(context.file, "rb") as handle:
            return tomllib.load(handle)
    except OSError as error:
        context.fail("(file)", f"cannot read: {error.strerror or error}")
    except UnicodeDecodeError as error:
        context.fail("(file)", f"not UTF-8 text: {error.reason}")
    except tomllib.TOMLDecodeError as error:
        context.fail("(syntax)", f"invalid TOML: {error}")


def resolve_path(context: Context, text: str, key: str) -> str:
    def expand(match: re.Match[str]) -> str:
        return _placeholder(context, match, key)

    expanded = _PLACEHOLDER.sub(expand, text)
    path = os.path.normpath(os.path.join(context.base_dir, expanded))
    if not os.path.exists(path):
        context.fail(key, f"{path!r} does not exist")
    return path


def _placeholder(context: Context, match: re.Match[str], key: str) -> str:
    token = match.group(0)
    if token in ("{{", "}}"):
        return token[0]
    name = match.group(1)
    if name in ("stdlib", "purelib", "platlib"):
        return sysconfig.get_paths()[name]
    if name == "prefix":
        return sys.prefix
    if name.startswith("package:"):
        return _package_path(context, name.removeprefix("package:"), key)
    context.fail(key, f"unknown placeholder {token}: use {_PLACEHOLDERS}")


def _package_path(context: Context, package: str, key: str) -> str:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        context.fail(key, f"package {package!r} is not installed")
    if spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    if spec.origin and os.path.isfile(spec.origin):
        return spec.origin
    context.fail(key, f"package {package!r} has no file to read")
