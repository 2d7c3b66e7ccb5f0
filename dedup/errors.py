"""The exception tree shared by every cowsim package.

Each message names the file, key or value at fault, so that the command
line can print it as a single line and exit non-zero.
"""


class CowsimError(Exception):
    """Base of every error cowsim raises on purpose."""


class ImageError(CowsimError):
    """An image path is missing, unreadable, empty or too large."""


class ShareError(CowsimError):
    """``share_mfns`` refused a pair of frames; nothing was changed."""
