"""Command-line value types shared by the ``cowsim`` subcommands.

Each is an argparse ``type``: it returns the value or raises
``ArgumentTypeError`` with the reason, which argparse prints on one line
after the option's name.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer type accepting ``low <= value`` (and ``<= high``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not an integer: {text!r}"
            ) from None
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"{low} to {high}"
            raise argparse.ArgumentTypeError(f"must be {bounds}: {value}")
        return value

    return parse


nonnegative = int_range(0)
positive = int_range(1)
port = int_range(0, 65535)
