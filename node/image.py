"""Disk images built from real files.

An image is the base disk of a guest: a sequence of 4 KiB blocks, each
named by the content id of its bytes in a :class:`ContentStore`. Guests
booted from images that hold the same files get the same content ids
for those blocks, which is what makes their page cache shareable.

A source is a directory tree, a tar archive or a raw disk image file;
several sources are laid out one after the other. Files of a tree or an
archive are laid out like a filesystem with 4 KiB blocks: each starts at
a block boundary and its last block is zero-padded. A raw disk image is
taken as its bytes in order and lists no files.

Left out: filesystem metadata (superblocks, inodes, directories),
fragmentation and sparse files (a hole is read as zero blocks). A file
with several hard links in a tree is laid out once, as a filesystem
stores it; a tar archive already records it once.
"""

import fnmatch
import lzma
import os
import stat
import tarfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import BinaryIO

import numpy as np

from dedup.content import PAGE_SIZE, ContentStore, fingerprint64
from dedup.errors import ImageError

LIBRARY_PATTERNS = ("*.so", "*.so.*", "*.dylib", "*.pyd")

_TAR_SUFFIXES = (
    ".tar",
    ".tar.gz",
    ".tgz",
    ".tar.bz2",
    ".tbz2",
    ".tar.xz",
    ".txz",
)
# Everything tarfile and its decompressors raise on a damaged archive;
# gzip and bz2 report bad data as OSError.
_TAR_ERRORS = (
    tarfile.TarError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    OSError,
)
_BATCH_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class FileExtent:
    """One file of an image: where its blocks are and what they hold."""

    path: str
    """Path relative to the source root, '/'-separated."""
    first_block: int
    """Index in the image of the file's first block."""
    n_blocks: int
    """Number of blocks, the last one zero-padded."""
    digest: int
    """64-bit identity of the file's content-id sequence.

    Files with equal bytes have equal digests when their images share
    one content store.
    """
    is_library: bool
    """Whether the file name matches ``LIBRARY_PATTERNS``."""


@dataclass(frozen=True, eq=False)
class Image:
    """The base disk of a guest, one content id per 4 KiB block."""

    name: str
    sources: tuple[str, ...]
    """Absolute paths of the sources, in layout order."""
    block_cids: np.ndarray
    """Read-only int64 content id of each block."""
    files: tuple[FileExtent, ...]
    """Non-empty files of tree and archive sources, in layout order."""

    @property
    def n_blocks(self) -> int:
        """Number of 4 KiB blocks."""
        return len(self.block_cids)

    @property
    def size_bytes(self) -> int:
        """Size of the image in bytes, padding included."""
        return self.n_blocks * PAGE_SIZE

    def libraries(self) -> tuple[FileExtent, ...]:
        """The files that are shared libraries."""
        return tuple(extent for extent in self.files if extent.is_library)


def load_image(
    name: str,
    paths: Sequence[str],
    store: ContentStore,
    exclude: Sequence[str] = (),
    max_bytes: int | None = None,
) -> Image:
    """Read the sources at ``paths`` into one image named ``name``.

    ``exclude`` holds fnmatch patterns matched against every path
    component; a matched directory is not descended. Raises
    :class:`ImageError` when a path is missing or unreadable, a tar
    archive is damaged, or the image is empty or over ``max_bytes``.
    """
    sources = tuple(os.path.abspath(os.fspath(path)) for path in paths)
    builder = _ImageBuilder(name, store, max_bytes)
    if not sources:
        raise builder.error("no source paths given")
    for source in sources:
        builder.source = source
        _load_source(builder, source, tuple(exclude))
    return builder.finish(sources)


class _ImageBuilder:
    """Lays files out block by block and interns them in large batches.

    File bytes are read straight into one reusable batch buffer; a file
    ends with zero padding to the next block, and the buffer is interned
    whenever it is full, so every flush is whole blocks.
    """

    def __init__(
        self, name: str, store: ContentStore, max_bytes: int | None
    ) -> None:
        self.name = name
        self.source = ""
        self._store = store
        self._max_bytes = max_bytes
        self._buffer = np.empty(_BATCH_BYTES, dtype=np.uint8)
        self._filled = 0
        self._flushed_blocks = 0
        self._cid_chunks: list[np.ndarray] = []
        self._extents: list[tuple[str, int, int]] = []

    @property
    def n_blocks(self) -> int:
        """Blocks laid out so far, a partly read block included."""
        return self._flushed_blocks + -(-self._filled // PAGE_SIZE)

    def error(self, message: str) -> ImageError:
        """An ImageError naming this image."""
        return ImageError(f"image {self.name!r}: {message}")

    def add_file(
        self, path: str | None, opener: Callable[[], BinaryIO], label: str
    ) -> None:
        """Lay out one file; ``path`` None lists no extent (raw disk)."""
        first = self.n_blocks
        try:
            with opener() as stream:
                self._read_stream(stream)
        except OSError as exc:
            raise self.error(f"cannot read {label}: {_reason(exc)}") from exc
        if path is not None and self.n_blocks > first:
            self._extents.append((path, first, self.n_blocks - first))

    def finish(self, sources: tuple[str, ...]) -> Image:
        """Intern what is left and return the image."""
        self._flush()
        if not self._flushed_blocks:
            raise self.error(f"no file content under {', '.join(sources)}")
        block_cids = np.concatenate(self._cid_chunks)
        block_cids.setflags(write=False)
        files = tuple(
            _extent(path, first, n_blocks, block_cids)
            for path, first, n_blocks in self._extents
        )
        return Image(self.name, sources, block_cids, files)

    def _read_stream(self, stream: BinaryIO) -> None:
        """Read a stream to its end, then pad to a block boundary."""
        view = memoryview(self._buffer)
        while True:
            if self._filled == len(self._buffer):
                self._flush()
            got = stream.readinto(view[self._filled :])
            if not got:
                break
            self._filled += got
            self._check_size()
        padding = -self._filled % PAGE_SIZE
        self._buffer[self._filled : self._filled + padding] = 0
        self._filled += padding

    def _check_size(self) -> None:
        """Stop as soon as the image grows past ``max_bytes``."""
        limit = self._max_bytes
        if limit is not None and self.n_blocks * PAGE_SIZE > limit:
            raise self.error(
                f"more than {_size_text(limit)} under {self.source}; "
                "raise max_size or add exclude patterns"
            )

    def _flush(self) -> None:
        """Intern the whole blocks in the buffer."""
        if not self._filled:
            return
        pages = self._buffer[: self._filled].reshape(-1, PAGE_SIZE)
        self._cid_chunks.append(self._store.intern_pages(pages))
        self._flushed_blocks += len(pages)
        self._filled = 0


def _load_source(
    builder: _ImageBuilder, source: str, exclude: tuple[str, ...]
) -> None:
    """Lay out one source path, whatever its kind."""
    try:
        mode = os.stat(source).st_mode
    except FileNotFoundError:
        raise builder.error(f"no such file or directory: {source}") from None
    except OSError as exc:
        raise builder.error(f"cannot read {source}: {_reason(exc)}") from exc
    if stat.S_ISDIR(mode):
        _load_directory(builder, source, "", exclude, set())
    elif not stat.S_ISREG(mode):
        raise builder.error(f"not a regular file or directory: {source}")
    elif source.lower().endswith(_TAR_SUFFIXES):
        _load_tar(builder, source, exclude)
    else:
        builder.add_file(None, partial(open, source, "rb"), source)


def _load_directory(
    builder: _ImageBuilder,
    directory: str,
    prefix: str,
    exclude: tuple[str, ...],
    seen: set[tuple[int, int]],
) -> None:
    """Lay out a tree depth first, in name order at every level.

    Files and subdirectories are interleaved by name, the order of
    ``tar --sort=name`` and of Python's ``tarfile.add``, so a tree and
    an archive made from it give the same blocks.
    """
    try:
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError as exc:
        raise builder.error(
            f"cannot read {directory}: {_reason(exc)}"
        ) from exc
    for entry in entries:
        if _matches(entry.name, exclude):
            continue
        try:
            _load_entry(builder, entry, prefix, exclude, seen)
        except OSError as exc:
            raise builder.error(
                f"cannot read {entry.path}: {_reason(exc)}"
            ) from exc


def _load_entry(
    builder: _ImageBuilder,
    entry: os.DirEntry,
    prefix: str,
    exclude: tuple[str, ...],
    seen: set[tuple[int, int]],
) -> None:
    """Descend into a directory or lay out a regular file.

    Symbolic links, sockets, devices and pipes hold no blocks of their
    own and are skipped.
    """
    path = prefix + entry.name
    if entry.is_dir(follow_symlinks=False):
        _load_directory(builder, entry.path, path + "/", exclude, seen)
    elif entry.is_file(follow_symlinks=False) and _first_link(entry, seen):
        opener = partial(open, entry.path, "rb")
        builder.add_file(path, opener, entry.path)


def _first_link(entry: os.DirEntry, seen: set[tuple[int, int]]) -> bool:
    """False for a hard link to a file already laid out."""
    info = entry.stat(follow_symlinks=False)
    if info.st_nlink < 2:
        return True
    key = (info.st_dev, info.st_ino)
    if key in seen:
        return False
    seen.add(key)
    return True


def _load_tar(
    builder: _ImageBuilder, archive: str, exclude: tuple[str, ...]
) -> None:
    """Lay out the regular file members of an archive, in its order."""
    try:
        tar = tarfile.open(archive, "r:*")
    except _TAR_ERRORS as exc:
        raise builder.error(
            f"cannot open tar archive {archive}: {_reason(exc)}"
        ) from exc
    with tar:
        try:
            for member in tar:
                _load_member(builder, tar, member, archive, exclude)
        except _TAR_ERRORS as exc:
            raise builder.error(
                f"cannot read tar archive {archive}: {_reason(exc)}"
            ) from exc


def _load_member(
    builder: _ImageBuilder,
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    archive: str,
    exclude: tuple[str, ...],
) -> None:
    """Lay out one member if it is a regular file not excluded."""
    parts = [part for part in member.name.split("/") if part not in ("", ".")]
    if not member.isreg() or not parts:
        return
    if any(_matches(part, exclude) for part in parts):
        return
    opener = partial(tar.extractfile, member)
    builder.add_file("/".join(parts), opener, f"{archive}!{member.name}")


def _extent(
    path: str, first: int, n_blocks: int, block_cids: np.ndarray
) -> FileExtent:
    """Describe one laid-out file."""
    cids = block_cids[first : first + n_blocks]
    name = path.rsplit("/", 1)[-1]
    return FileExtent(
        path=path,
        first_block=first,
        n_blocks=n_blocks,
        digest=fingerprint64(cids.tobytes()),
        is_library=_matches(name, LIBRARY_PATTERNS),
    )


def _matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether a path component matches any of the fnmatch patterns."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _reason(exc: BaseException) -> str:
    """A one-line reason for an error message."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _size_text(n_bytes: int) -> str:
    """A byte count in the largest binary unit that divides it."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n_bytes >= size and n_bytes % size == 0:
            return f"{n_bytes // size} {unit}"
    return f"{n_bytes} bytes"
