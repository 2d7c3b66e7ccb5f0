"""Tests for disk images built from real files."""

import os
import tarfile

import numpy as np
import pytest

from dedup.content import PAGE_SIZE, ZERO_CONTENT, ContentStore
from dedup.errors import ImageError
from node.image import LIBRARY_PATTERNS, FileExtent, Image, load_image


def fill(byte: int, n_bytes: int) -> bytes:
    return bytes([byte]) * n_bytes


def write(path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def tree(tmp_path):
    """A small tree with nested dirs, a library and an empty file."""
    root = tmp_path / "root"
    write(root / "b.txt", fill(2, 100))
    write(root / "a" / "lib" / "libfoo.so.1", fill(3, PAGE_SIZE + 1))
    write(root / "a" / "x.bin", fill(4, PAGE_SIZE))
    write(root / "a" / "empty", b"")
    write(root / "c.pyd", fill(5, 2 * PAGE_SIZE))
    return root


def block(byte: int, used: int = PAGE_SIZE) -> bytes:
    return fill(byte, used) + bytes(PAGE_SIZE - used)


def image_bytes(image: Image, store: ContentStore) -> bytes:
    return b"".join(store.page_bytes(int(c)) for c in image.block_cids)


def make_tar(path, root, mode: str = "w") -> str:
    with tarfile.open(path, mode) as tar:
        tar.add(root, arcname=".")
    return str(path)


def test_tree_layout(tree):
    store = ContentStore()
    image = load_image("web", [str(tree)], store)
    assert image.name == "web"
    assert image.sources == (str(tree),)
    assert [f.path for f in image.files] == [
        "a/lib/libfoo.so.1",
        "a/x.bin",
        "b.txt",
        "c.pyd",
    ]
    assert [(f.first_block, f.n_blocks) for f in image.files] == [
        (0, 2),
        (2, 1),
        (3, 1),
        (4, 2),
    ]
    assert image.n_blocks == 6
    assert image.size_bytes == 6 * PAGE_SIZE
    assert image.block_cids.dtype == np.int64
    expected = [block(3), block(3, 1), block(4), block(2, 100)]
    expected += [block(5), block(5)]
    assert image_bytes(image, store) == b"".join(expected)


def test_library_detection(tree):
    image = load_image("web", [str(tree)], ContentStore())
    libraries = image.libraries()
    assert [f.path for f in libraries] == ["a/lib/libfoo.so.1", "c.pyd"]
    assert all(isinstance(f, FileExtent) for f in libraries)
    assert "*.so" in LIBRARY_PATTERNS


def test_exclude_skips_directories_and_files(tree):
    write(tree / "a" / "__pycache__" / "m.pyc", fill(6, 10))
    write(tree / "top.pyc", fill(7, 10))
    image = load_image(
        "web", [str(tree)], ContentStore(), exclude=("lib", "*.pyc")
    )
    assert [f.path for f in image.files] == ["a/x.bin", "b.txt", "c.pyd"]


def test_exclude_matches_components_not_paths(tree):
    image = load_image("web", [str(tree)], ContentStore(), exclude=("a/x*",))
    assert "a/x.bin" in [f.path for f in image.files]


def test_symlinks_are_skipped(tree):
    os.symlink(tree / "c.pyd", tree / "link.pyd")
    os.symlink(tree / "a", tree / "linkdir")
    image = load_image("web", [str(tree)], ContentStore())
    paths = [f.path for f in image.files]
    assert "link.pyd" not in paths
    assert not any(p.startswith("linkdir") for p in paths)


def test_hard_links_are_laid_out_once(tree):
    os.link(tree / "c.pyd", tree / "d.pyd")
    image = load_image("web", [str(tree)], ContentStore())
    assert [f.path for f in image.files][-1] == "c.pyd"
    assert image.n_blocks == 6


def test_tar_equals_directory(tree, tmp_path):
    archive = make_tar(tmp_path / "root.tar", tree)
    from_dir = load_image("d", [str(tree)], ContentStore())
    from_tar = load_image("t", [archive], ContentStore())
    assert np.array_equal(from_dir.block_cids, from_tar.block_cids)
    assert from_dir.files == from_tar.files


@pytest.mark.parametrize(
    ("suffix", "mode"),
    [(".tar.gz", "w:gz"), (".tgz", "w:gz"), (".tar.bz2", "w:bz2")]
    + [(".tar.xz", "w:xz")],
)
def test_compressed_tar(tree, tmp_path, suffix, mode):
    archive = make_tar(tmp_path / f"root{suffix}", tree, mode)
    store = ContentStore()
    from_dir = load_image("d", [str(tree)], store)
    from_tar = load_image("t", [archive], store)
    assert np.array_equal(from_dir.block_cids, from_tar.block_cids)


def test_tar_exclude_and_member_order(tmp_path):
    archive = tmp_path / "odd.tar"
    members = [("z/keep", 1), ("a/__pycache__/x", 2), ("m", 3)]
    for name, byte in members:
        write(tmp_path / "src" / name, fill(byte, 10))
    with tarfile.open(archive, "w") as tar:
        for name, _ in members:
            tar.add(tmp_path / "src" / name, arcname=name)
    image = load_image(
        "t", [str(archive)], ContentStore(), exclude=("__pycache__",)
    )
    assert [f.path for f in image.files] == ["z/keep", "m"]


def test_raw_file(tmp_path):
    raw = tmp_path / "disk.img"
    data = fill(1, PAGE_SIZE) + bytes(PAGE_SIZE) + fill(9, 10)
    raw.write_bytes(data)
    store = ContentStore()
    image = load_image("raw", [str(raw)], store)
    assert image.files == ()
    assert image.n_blocks == 3
    assert image.block_cids[1] == ZERO_CONTENT
    assert image_bytes(image, store) == data + bytes(PAGE_SIZE - 10)


def test_raw_file_larger_than_one_batch(tmp_path, monkeypatch):
    monkeypatch.setattr("node.image._BATCH_BYTES", 2 * PAGE_SIZE)
    raw = tmp_path / "disk.img"
    data = np.random.default_rng(0).bytes(5 * PAGE_SIZE + 7)
    raw.write_bytes(data)
    store = ContentStore()
    image = load_image("raw", [str(raw)], store)
    assert image.n_blocks == 6
    assert image_bytes(image, store)[: len(data)] == data


def test_concatenated_paths(tree, tmp_path):
    raw = tmp_path / "disk.img"
    raw.write_bytes(fill(8, 10))
    store = ContentStore()
    alone = load_image("d", [str(tree)], store)
    both = load_image("both", [str(raw), str(tree)], store)
    assert both.sources == (str(raw), str(tree))
    assert both.n_blocks == alone.n_blocks + 1
    assert np.array_equal(both.block_cids[1:], alone.block_cids)
    assert [f.first_block for f in both.files] == [
        f.first_block + 1 for f in alone.files
    ]


def test_shared_file_has_equal_digest_and_cids(tmp_path):
    payload = np.random.default_rng(1).bytes(3 * PAGE_SIZE + 5)
    write(tmp_path / "one" / "lib.so", payload)
    write(tmp_path / "one" / "a", fill(1, 10))
    write(tmp_path / "two" / "lib.so", payload)
    write(tmp_path / "two" / "b", fill(2, 10))
    write(tmp_path / "two" / "c", fill(3, 10))
    store = ContentStore()
    one = load_image("one", [str(tmp_path / "one")], store)
    two = load_image("two", [str(tmp_path / "two")], store)
    lib_one, lib_two = one.libraries()[0], two.libraries()[0]
    assert lib_one.digest == lib_two.digest
    assert lib_one.first_block != lib_two.first_block
    span_one = slice(lib_one.first_block, lib_one.first_block + 4)
    span_two = slice(lib_two.first_block, lib_two.first_block + 4)
    assert np.array_equal(one.block_cids[span_one], two.block_cids[span_two])
    others = {f.digest for f in one.files + two.files if not f.is_library}
    assert lib_one.digest not in others


def test_deterministic(tree):
    first = load_image("web", [str(tree)], ContentStore())
    second = load_image("web", [str(tree)], ContentStore())
    assert np.array_equal(first.block_cids, second.block_cids)
    assert first.files == second.files


def test_block_cids_are_read_only(tree):
    image = load_image("web", [str(tree)], ContentStore())
    with pytest.raises(ValueError):
        image.block_cids[0] = 1


def test_missing_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ImageError, match="image 'x'") as info:
        load_image("x", [str(missing)], ContentStore())
    assert str(missing) in str(info.value)


def test_no_paths():
    with pytest.raises(ImageError, match="image 'x'"):
        load_image("x", [], ContentStore())


def test_empty_image(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    message = f"image 'x': no file content under {tmp_path}"
    with pytest.raises(ImageError, match=message):
        load_image("x", [str(tmp_path)], ContentStore())


def test_everything_excluded_is_empty(tree):
    with pytest.raises(ImageError, match="no file content"):
        load_image("x", [str(tree)], ContentStore(), exclude=("*",))


def test_too_large(tree):
    with pytest.raises(ImageError) as info:
        load_image("x", [str(tree)], ContentStore(), max_bytes=1 << 14)
    assert str(info.value) == (
        f"image 'x': more than 16 KiB under {tree}; "
        "raise max_size or add exclude patterns"
    )


def test_exactly_at_limit_is_accepted(tree):
    image = load_image("x", [str(tree)], ContentStore(), max_bytes=6 * 4096)
    assert image.size_bytes == 6 * PAGE_SIZE


def test_damaged_tar(tmp_path):
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(b"this is not a gzip stream at all")
    with pytest.raises(ImageError, match="cannot open tar archive") as info:
        load_image("x", [str(archive)], ContentStore())
    assert str(archive) in str(info.value)


def test_truncated_tar(tree, tmp_path):
    archive = tmp_path / "root.tar.gz"
    make_tar(archive, tree, "w:gz")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as info:
        load_image("x", [str(archive)], ContentStore())
    assert str(archive) in str(info.value)


def test_unreadable_file(tree, monkeypatch):
    # Tests may run as root, who reads any file whatever its mode, so
    # the refusal is injected where the file is opened.
    def refuse(path, mode):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr("node.image.open", refuse, raising=False)
    with pytest.raises(ImageError, match="Permission denied") as info:
        load_image("x", [str(tree)], ContentStore())
    assert str(tree / "a" / "empty") in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_by_mode(tree):
    target = tree / "b.txt"
    target.chmod(0)
    with pytest.raises(ImageError, match=str(target)):
        load_image("x", [str(tree)], ContentStore())


def test_unreadable_directory(tree, monkeypatch):
    def refuse(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr("node.image.os.scandir", refuse)
    with pytest.raises(ImageError, match="Permission denied") as info:
        load_image("x", [str(tree)], ContentStore())
    assert str(tree) in str(info.value)


def test_not_a_regular_file(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match=str(fifo)):
        load_image("x", [str(fifo)], ContentStore())
