"""Tests of scenario files: loading, expansion, defaults, dump and errors."""

import dataclasses
import fnmatch
import os
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.scenario import (
    PAGE_SIZE,
    GuestSpec,
    HostSpec,
    ImageSpec,
    Scenario,
    ScenarioError,
    WorkloadSpec,
    dump_scenario,
    format_size,
    load_scenario,
    parse_size,
)
from dedup.errors import CowsimError

MiB = 1 << 20

# A small valid scenario; error cases below each change one line of it.
BASE = """\
seed = 3
ticks = 10
tick_seconds = 0.5
batch_ticks = 5

[[hosts]]
count = 2
memory = "64MiB"

[images.base]
paths = ["data"]

[[guests]]
name = "web"
image = "base"
memory = "16MiB"
"""


def write(directory: Path, text: str, name: str = "run.toml") -> Path:
    """Write a scenario, with the ``data`` directory its image reads."""
    (directory / "data").mkdir(exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def change(old: str, new: str) -> str:
    """Return BASE with its one occurrence of ``old`` replaced."""
    assert BASE.count(old) == 1, old
    return BASE.replace(old, new)


def load_error(path: Path) -> str:
    """Load ``path``, expecting a one-line ScenarioError naming it."""
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


# The default scenario


def test_default_meets_its_constraints() -> None:
    scenario = load_scenario()
    assert scenario.source == "built-in default"
    assert scenario.name == "default"
    assert len(scenario.hosts) >= 4
    assert len(scenario.guests) >= 16
    assert len(scenario.images) >= 2
    for image in scenario.images:
        assert all(os.path.exists(path) for path in image.paths)
    host_bytes = sum(host.memory_bytes for host in scenario.hosts)
    guest_bytes = sum(guest.memory_bytes for guest in scenario.guests)
    assert guest_bytes < host_bytes
    assert {guest.image for guest in scenario.guests} == {
        image.name for image in scenario.images
    }


def _excluded(path: str, root: str, exclude: tuple[str, ...]) -> bool:
    parts = Path(os.path.relpath(path, root)).parts
    return any(
        fnmatch.fnmatch(part, pattern) for part in parts for pattern in exclude
    )


def test_default_images_share_part_of_their_content() -> None:
    scenario = load_scenario()
    pybase, pyapps = scenario.image("pybase"), scenario.image("pyapps")
    (stdlib,) = pybase.paths
    shared = [
        path
        for path in pyapps.paths
        if os.path.commonpath([path, stdlib]) == stdlib
        and not _excluded(path, stdlib, pybase.exclude)
    ]
    assert 0 < len(shared) < len(pyapps.paths)


def test_path_argument_may_be_a_string_or_a_path(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    assert load_scenario(str(path)) == load_scenario(path)
    assert load_scenario(str(path)).source == str(path)


# Expansion and defaults


def test_count_expands_hosts_and_guests(tmp_path: Path) -> None:
    text = BASE + '\n[[guests]]\nname = "db"\nimage = "base"\n'
    text += 'memory = "8MiB"\ncount = 3\n'
    scenario = load_scenario(write(tmp_path, text))
    assert [host.name for host in scenario.hosts] == ["host-0", "host-1"]
    assert [guest.name for guest in scenario.guests] == [
        "web",
        "db-0",
        "db-1",
        "db-2",
    ]
    assert {guest.memory_bytes for guest in scenario.guests[1:]} == {8 * MiB}


def test_defaults(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, BASE, "small-run.toml"))
    assert scenario.name == "small-run"
    assert (scenario.seed, scenario.ticks) == (3, 10)
    assert (scenario.tick_seconds, scenario.batch_ticks) == (0.5, 5)
    assert scenario.hosts[0] == HostSpec("host-0", 64 * MiB)
    assert scenario.hosts[0].memory_pages == 64 * MiB // PAGE_SIZE
    assert scenario.images == (
        ImageSpec("base", (str(tmp_path / "data"),), (), 1 << 30),
    )
    assert scenario.guests == (
        GuestSpec("web", "base", 16 * MiB, "pv", 0.5, True, WorkloadSpec()),
    )
    assert scenario.guests[0].memory_pages == 4096
    assert WorkloadSpec() == WorkloadSpec(64, 8, 128, 32)


FULL = """\
name = "named"
seed = 0
ticks = 1
tick_seconds = 2
batch_ticks = 1

[[hosts]]
name = "node"
count = 1
memory = 67108864

[images.base]
paths = ["data"]
exclude = ["*.pyc"]
max_size = "8MiB"

[[guests]]
name = "web"
count = 1
image = "base"
memory = "16MiB"
kind = "hvm"
boot_read_fraction = 1
map_libraries = false

[guests.workload]
read_pages_per_tick = 1
free_pages_per_tick = 0
"""


def test_every_key_is_read(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, FULL))
    assert scenario.name == "named"
    assert scenario.tick_seconds == 2.0
    assert isinstance(scenario.tick_seconds, float)
    assert scenario.hosts == (HostSpec("node", 64 * MiB),)
    assert scenario.images[0].exclude == ("*.pyc",)
    assert scenario.images[0].max_bytes == 8 * MiB
    guest = scenario.guests[0]
    assert (guest.kind, guest.boot_read_fraction) == ("hvm", 1.0)
    assert guest.map_libraries is False
    assert guest.workload == WorkloadSpec(1, 8, 128, 0)


# Image paths


@pytest.mark.parametrize("name", ["stdlib", "purelib", "platlib"])
def test_sysconfig_placeholders(tmp_path: Path, name: str) -> None:
    text = change('paths = ["data"]', f'paths = ["{{{name}}}"]')
    scenario = load_scenario(write(tmp_path, text))
    expected = os.path.normpath(sysconfig.get_paths()[name])
    assert scenario.images[0].paths == (expected,)


def test_prefix_and_suffix_around_a_placeholder(tmp_path: Path) -> None:
    text = change('paths = ["data"]', 'paths = ["{prefix}", "{stdlib}/json"]')
    paths = load_scenario(write(tmp_path, text)).images[0].paths
    stdlib = sysconfig.get_paths()["stdlib"]
    assert paths == (
        os.path.normpath(sys.prefix),
        os.path.normpath(os.path.join(stdlib, "json")),
    )


def test_package_placeholders(tmp_path: Path) -> None:
    import mmh3
    import numpy

    text = change(
        'paths = ["data"]', 'paths = ["{package:numpy}", "{package:mmh3}"]'
    )
    paths = load_scenario(write(tmp_path, text)).images[0].paths
    assert paths[0] == os.path.dirname(numpy.__file__)
    assert paths[1] == mmh3.__file__


def test_relative_paths_follow_the_scenario_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "images" / "extra").mkdir(parents=True)
    text = change('paths = ["data"]', 'paths = ["../data", "./extra/"]')
    path = write(tmp_path, text, "images/run.toml")
    monkeypatch.chdir("/")
    paths = load_scenario(path).images[0].paths
    assert paths == (str(tmp_path / "data"), str(tmp_path / "images/extra"))


def test_doubled_braces_stand_for_braces(tmp_path: Path) -> None:
    (tmp_path / "{odd}").mkdir()
    text = change('paths = ["data"]', 'paths = ["{{odd}}"]')
    paths = load_scenario(write(tmp_path, text)).images[0].paths
    assert paths == (str(tmp_path / "{odd}"),)


# Sizes


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (4096, 4096),
        ("4096", 4096),
        ("8KiB", 8192),
        ("8K", 8192),
        ("2 GiB", 2 << 30),
        ("1.5G", 3 << 29),
        ("3MiB", 3 * MiB),
        ("1TiB", 1 << 40),
        ("4096B", 4096),
    ],
)
def test_parse_size(value: int | str, expected: int) -> None:
    assert parse_size(value, "here") == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("2GB", "cannot parse"),
        ("lots", "cannot parse"),
        ("-4KiB", "cannot parse"),
        (0, "positive"),
        (-4096, "positive"),
        ("0MiB", "positive"),
        (4097, "multiple"),
        ("1.5B", "whole number"),
        (True, "expected a size"),
        (2.0, "expected a size"),
    ],
)
def test_parse_size_rejects(value: object, fragment: str) -> None:
    with pytest.raises(ScenarioError, match=f"^here: .*{fragment}"):
        parse_size(value, "here")  # type: ignore[arg-type]


UNITS = {"K": 1 << 10, "MiB": 1 << 20, "G": 1 << 30, "TiB": 1 << 40}


@given(st.integers(1, 1 << 30), st.sampled_from(sorted(UNITS)))
def test_sizes_round_trip(pages: int, unit: str) -> None:
    nbytes = pages * PAGE_SIZE
    assert parse_size(format_size(nbytes), "here") == nbytes
    assert parse_size(f"{pages * 4}{unit}", "here") == pages * 4 * UNITS[unit]


# Dump and load back


def test_default_round_trips(tmp_path: Path) -> None:
    scenario = load_scenario()
    text = dump_scenario(scenario)
    again = load_scenario(write(tmp_path, text))
    assert again == scenario
    assert again.source == str(tmp_path / "run.toml")
    assert dump_scenario(again) == text
    assert text.count("[[guests]]") == len(scenario.guests)
    assert "{" not in text


def test_written_scenario_round_trips(tmp_path: Path) -> None:
    (tmp_path / "{odd}").mkdir()
    text = change('paths = ["data"]', 'paths = ["data", "{{odd}}"]')
    text = text.replace("seed = 3", 'name = "odd.name_1-x"\nseed = 3')
    scenario = load_scenario(write(tmp_path, text))
    dumped = write(tmp_path, dump_scenario(scenario), "dumped.toml")
    assert load_scenario(dumped) == scenario
    assert "count = 1\n" in dumped.read_text()


@given(
    st.lists(st.text(min_size=1), max_size=4),
    st.floats(0.0, 1.0),
    st.floats(1e-9, 1e9),
)
def test_odd_values_round_trip(
    exclude: list[str], fraction: float, seconds: float
) -> None:
    host = HostSpec("h", 1 << 30)
    image = ImageSpec("img", (os.getcwd(),), tuple(exclude), 1 << 20)
    guest = GuestSpec("g", "img", 4096, "pv", fraction, True, WorkloadSpec())
    scenario = Scenario(
        "n", "test", 0, 1, seconds, 1, (host,), (image,), (guest,)
    )
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "odd.toml"
        path.write_text(dump_scenario(scenario), encoding="utf-8")
        assert load_scenario(path) == scenario


def test_with_seed(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, BASE))
    reseeded = scenario.with_seed(42)
    assert reseeded.seed == 42
    assert scenario.seed == 3
    assert dataclasses.replace(reseeded, seed=3) == scenario
    with pytest.raises(ScenarioError, match=r": seed: must be >= 0"):
        scenario.with_seed(-1)


def test_image_lookup(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, BASE))
    assert scenario.image("base") is scenario.images[0]
    with pytest.raises(KeyError):
        scenario.image("nope")


# Errors: each case changes BASE and expects one line naming the key.

ERROR_CASES = {
    # unknown keys, at every level
    "unknown top key": (
        "seed = 3",
        "colour = 1\nseed = 3",
        "colour",
        "unknown key",
    ),
    "unknown host key": (
        "count = 2",
        "count = 2\nram = 1",
        "hosts[0].ram",
        "unknown key",
    ),
    "unknown image key": (
        'paths = ["data"]',
        'paths = ["data"]\nexcludes = []',
        "images.base.excludes",
        "unknown key",
    ),
    "unknown guest key": (
        'memory = "16MiB"',
        'memroy = "16MiB"',
        "guests[0].memroy",
        "unknown key",
    ),
    "unknown workload key": (
        'memory = "16MiB"',
        'memory = "16MiB"\n[guests.workload]\nreads = 1',
        "guests[0].workload.reads",
        "unknown key",
    ),
    # wrong types
    "bool is not an int": ("seed = 3", "seed = true", "seed", "integer"),
    "string is not an int": ("ticks = 10", 'ticks = "10"', "ticks", "int"),
    "float count": ("count = 2", "count = 2.0", "hosts[0].count", "int"),
    "string seconds": (
        "tick_seconds = 0.5",
        'tick_seconds = "0.5"',
        "tick_seconds",
        "number",
    ),
    "int is not a bool": (
        'memory = "16MiB"',
        'memory = "16MiB"\nmap_libraries = 1',
        "guests[0].map_libraries",
        "true or false",
    ),
    "paths not a list": (
        'paths = ["data"]',
        'paths = "data"',
        "images.base.paths",
        "array",
    ),
    "path not a string": (
        'paths = ["data"]',
        'paths = ["data", 7]',
        "images.base.paths[1]",
        "string",
    ),
    "empty exclude pattern": (
        'paths = ["data"]',
        'paths = ["data"]\nexclude = [""]',
        "images.base.exclude[0]",
        "empty",
    ),
    "name not a string": (
        'name = "web"',
        "name = 5",
        "guests[0].name",
        "string",
    ),
    "bad guest name": (
        'name = "web"',
        'name = "web server"',
        "guests[0].name",
        "bad name",
    ),
    "hosts as a table": (
        '[[hosts]]\ncount = 2\nmemory = "64MiB"',
        '[hosts]\ncount = 2\nmemory = "64MiB"',
        "hosts",
        "array of tables",
    ),
    "workload not a table": (
        'memory = "16MiB"',
        'memory = "16MiB"\nworkload = 3',
        "guests[0].workload",
        "table",
    ),
    "image not a table": (
        '[images.base]\npaths = ["data"]',
        '[images]\nbase = "data"',
        "images.base",
        "table",
    ),
    "bad image name": (
        "[images.base]",
        '[images."Base Image"]',
        "images.Base Image",
        "bad image name",
    ),
    # missing required keys
    "missing seed": ("seed = 3\n", "", "seed", "missing required key"),
    "missing host memory": (
        'memory = "64MiB"',
        "",
        "hosts[0].memory",
        "missing",
    ),
    "missing image paths": (
        'paths = ["data"]',
        "",
        "images.base.paths",
        "missing",
    ),
    "missing guest image": (
        'image = "base"',
        "",
        "guests[0].image",
        "missing",
    ),
    "missing hosts": (
        '[[hosts]]\ncount = 2\nmemory = "64MiB"',
        "",
        "hosts",
        "missing",
    ),
    # sizes
    "unparsable size": (
        'memory = "64MiB"',
        'memory = "64 MB"',
        "hosts[0].memory",
        "cannot parse size",
    ),
    "zero size": ('memory = "64MiB"', "memory = 0", "hosts[0].memory", "pos"),
    "negative size": (
        'memory = "16MiB"',
        "memory = -4096",
        "guests[0].memory",
        "positive",
    ),
    "size not in pages": (
        'memory = "16MiB"',
        "memory = 10000",
        "guests[0].memory",
        "multiple",
    ),
    "zero max size": (
        'paths = ["data"]',
        'paths = ["data"]\nmax_size = "0GiB"',
        "images.base.max_size",
        "positive",
    ),
    # ranges and choices
    "fraction above one": (
        'memory = "16MiB"',
        'memory = "16MiB"\nboot_read_fraction = 1.5',
        "guests[0].boot_read_fraction",
        "between 0 and 1",
    ),
    "fraction below zero": (
        'memory = "16MiB"',
        'memory = "16MiB"\nboot_read_fraction = -0.1',
        "guests[0].boot_read_fraction",
        "between 0 and 1",
    ),
    "fraction not finite": (
        'memory = "16MiB"',
        'memory = "16MiB"\nboot_read_fraction = nan',
        "guests[0].boot_read_fraction",
        "finite",
    ),
    "bad kind": (
        'memory = "16MiB"',
        'memory = "16MiB"\nkind = "kvm"',
        "guests[0].kind",
        "'kvm' is not one of 'hvm', 'pv'",
    ),
    "negative seed": ("seed = 3", "seed = -1", "seed", ">= 0"),
    "zero ticks": ("ticks = 10", "ticks = 0", "ticks", ">= 1"),
    "zero batch": ("batch_ticks = 5", "batch_ticks = 0", "batch_ticks", ">="),
    "zero seconds": (
        "tick_seconds = 0.5",
        "tick_seconds = 0",
        "tick_seconds",
        "> 0",
    ),
    "zero count": ("count = 2", "count = 0", "hosts[0].count", ">= 1"),
    "negative workload": (
        'memory = "16MiB"',
        'memory = "16MiB"\n[guests.workload]\nread_pages_per_tick = -1',
        "guests[0].workload.read_pages_per_tick",
        ">= 0",
    ),
    # references and paths
    "undefined image": (
        'image = "base"',
        'image = "nope"',
        "guests[0].image",
        "'nope' is not one of 'base'",
    ),
    "missing image path": (
        'paths = ["data"]',
        'paths = ["data", "gone"]',
        "images.base.paths[1]",
        "does not exist",
    ),
    "unknown placeholder": (
        'paths = ["data"]',
        'paths = ["{stdlibs}/json"]',
        "images.base.paths[0]",
        "unknown placeholder {stdlibs}",
    ),
    "package not found": (
        'paths = ["data"]',
        'paths = ["{package:no_such_package_here}"]',
        "images.base.paths[0]",
        "'no_such_package_here' is not installed",
    ),
    "built-in module has no file": (
        'paths = ["data"]',
        'paths = ["{package:sys}"]',
        "images.base.paths[0]",
        "no file",
    ),
    # empty sections
    "no hosts": (
        '[[hosts]]\ncount = 2\nmemory = "64MiB"',
        "hosts = []",
        "hosts",
        "at least one",
    ),
    "no image paths": (
        'paths = ["data"]',
        "paths = []",
        "images.base.paths",
        "at least one",
    ),
    # capacity
    "guest larger than any host": (
        'memory = "16MiB"',
        'memory = "128MiB"',
        "guests[0].memory",
        "impossible size: 128MiB",
    ),
    "guests larger than the cluster": (
        'memory = "16MiB"',
        'memory = "16MiB"\ncount = 9',
        "guests",
        "total guest memory 144MiB is more than total host memory 128MiB",
    ),
    "host larger than the engine allows": (
        'count = 2\nmemory = "64MiB"',
        'count = 2\nmemory = "1000TiB"',
        "hosts[0].memory",
        "1000TiB is more than a host may have (256GiB)",
    ),
    "burst after the last tick": (
        'memory = "16MiB"\n',
        'memory = "16MiB"\nworkload = { burst_tick = 11 }\n',
        "guests[0].workload.burst_tick",
        "11 is after the last tick (10)",
    ),
    "transient data never changes": (
        'memory = "16MiB"\n',
        'memory = "16MiB"\nworkload = { transient_ticks = 0 }\n',
        "guests[0].workload.transient_ticks",
        "must be >= 1",
    ),
    "more transient pages than the guest has": (
        'memory = "16MiB"\n',
        'memory = "16MiB"\nworkload = { transient_pages = 5000 }\n',
        "guests[0].workload.transient_pages",
        "5000 is more than the guest's 4096 pages",
    ),
    "scenario name leaves the results folder": (
        "seed = 3",
        'name = "../escaped"\nseed = 3',
        "name",
        "bad name '../escaped'",
    ),
    # duplicate names
    "duplicate guest": (
        'memory = "16MiB"\n',
        'memory = "16MiB"\n[[guests]]\nname = "web"\nimage = "base"\n'
        'memory = "16MiB"\n',
        "guests[1].name",
        "duplicate name 'web', also in guests[0]",
    ),
    "duplicate host after expansion": (
        'count = 2\nmemory = "64MiB"\n',
        'count = 2\nmemory = "64MiB"\n[[hosts]]\nname = "host-1"\n'
        'memory = "64MiB"\n',
        "hosts[1].name",
        "duplicate name 'host-1'",
    ),
}


@pytest.mark.parametrize(
    ("old", "new", "key", "fragment"),
    list(ERROR_CASES.values()),
    ids=list(ERROR_CASES),
)
def test_errors_name_file_and_key(
    tmp_path: Path, old: str, new: str, key: str, fragment: str
) -> None:
    message = load_error(write(tmp_path, change(old, new)))
    assert f": {key}: " in message
    assert fragment in message.split(f": {key}: ", 1)[1]


@pytest.mark.parametrize(
    ("block", "key"),
    [
        ('[images.base]\npaths = ["data"]\n', "images"),
        (
            '[[guests]]\nname = "web"\nimage = "base"\nmemory = "16MiB"\n',
            "guests",
        ),
    ],
)
def test_empty_sections(tmp_path: Path, block: str, key: str) -> None:
    empty = "{}" if key == "images" else "[]"
    text = f"{key} = {empty}\n" + change(block, "")
    message = load_error(write(tmp_path, text))
    assert f": {key}: at least one " in message


def test_missing_file(tmp_path: Path) -> None:
    message = load_error(tmp_path / "absent.toml")
    assert "(file): cannot read: No such file or directory" in message


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    assert "(file): cannot read" in load_error(tmp_path)


def test_toml_syntax_error(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, change("seed = 3", "seed = = 3")))
    assert ": (syntax): invalid TOML: " in message
    assert "line 1" in message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.toml"
    path.write_bytes(b'name = "caf\xe9"\n')
    assert "(file): not UTF-8 text" in load_error(path)


def test_errors_belong_to_the_cowsim_tree() -> None:
    assert issubclass(ScenarioError, CowsimError)


def test_default_name_is_the_file_stem_made_safe(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, BASE, name="my run (2).toml"))
    assert scenario.name == "my-run-2-"
