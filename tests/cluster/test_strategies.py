"""Detection strategies in scenario files: ``[hosts.detect]``."""

import pytest

from cluster.scenario import ScenarioError, dump_scenario, load_scenario
from cluster.strategies import NAMED
from dedup.blocks import BlockParams
from dedup.ksm import KsmParams
from dedup.sampling import SamplingParams
from dedup.strategy import Strategy
from tests.cluster.test_scenario import BASE, write

DETECT = """
[hosts.detect]
hints = false
ksm = { pages_to_scan = 500, max_page_sharing = 64, use_zero_pages = true }
sampling = {}
blocks = { block_pages = 64, pages_per_tick = 1024 }
"""


def with_detect(tmp_path, detect):
    text = BASE.replace('memory = "64MiB"\n', 'memory = "64MiB"\n' + detect)
    return write(tmp_path, text)


def test_a_host_without_detect_uses_hints():
    s = load_scenario(None)
    assert all(h.strategy == Strategy() for h in s.hosts)


def test_detect_table_is_parsed_and_dumped_back(tmp_path):
    s = load_scenario(with_detect(tmp_path, DETECT))
    want = Strategy(
        hints=False,
        ksm=KsmParams(
            pages_to_scan=500, max_page_sharing=64, use_zero_pages=True
        ),
        sampling=SamplingParams(),
        blocks=BlockParams(pages_per_tick=1024, block_pages=64),
    )
    assert all(h.strategy == want for h in s.hosts)
    again = write(tmp_path, dump_scenario(s), "again.toml")
    assert load_scenario(again) == s


def test_named_strategies():
    assert list(NAMED) == ["hints", "ksm", "sampling", "blocks", "hints+ksm"]
    assert all(name == s.label for name, s in NAMED.items())


@pytest.mark.parametrize(
    "detect, needle",
    [
        ("[hosts.detect]\nmagic = true\n", "hosts[0].detect.magic"),
        ("[hosts.detect]\nhints = 1\n", "hosts[0].detect.hints"),
        ("[hosts.detect]\nksm = 3\n", "hosts[0].detect.ksm"),
        (
            "[hosts.detect]\nksm = { pages_to_scan = 0 }\n",
            "hosts[0].detect.ksm.pages_to_scan",
        ),
        (
            "[hosts.detect]\nksm = { max_page_sharing = 1 }\n",
            "hosts[0].detect.ksm",
        ),
        (
            "[hosts.detect]\nksm = { use_zero_pages = 2 }\n",
            "hosts[0].detect.ksm.use_zero_pages",
        ),
        (
            "[hosts.detect]\nblocks = { block_pages = 100 }\n",
            "hosts[0].detect.blocks",
        ),
        (
            "[hosts.detect]\nsampling = { rate = 5 }\n",
            "hosts[0].detect.sampling.rate",
        ),
    ],
)
def test_bad_detect_tables_name_the_key(tmp_path, detect, needle):
    with pytest.raises(ScenarioError) as info:
        load_scenario(with_detect(tmp_path, detect))
    message = str(info.value)
    assert needle in message and "run.toml" in message
    assert "\n" not in message
