"""The fake hypervisor's latency model: parsed strictly, drawn reproducibly,
and spent by the driver's calls."""

from __future__ import annotations

import time

import pytest

from drivers.fake import FakeDriver
from drivers.latency import BadLatencySpec, LatencyModel
from tests.conftest import run_cli, write_conf


@pytest.mark.parametrize(
    "spec, message",
    [
        (["pwer_on:1"], "'pwer_on' is not a driver call; did you mean power_on"),
        (["power_on"], "expected METHOD:SECONDS"),
        (["power_on:-1"], "seconds must be a number >= 0"),
        (["power_on:abc"], "seconds must be a number >= 0"),
    ],
)
def test_a_bad_latency_is_refused_with_what_was_expected(spec, message):
    with pytest.raises(BadLatencySpec, match=message):
        LatencyModel.parse(spec)


def test_draws_are_seeded_per_host_and_keep_their_mean():
    def draws(seed: int, host: str) -> list[float]:
        model = LatencyModel.parse(["*:0.5", "power_on:0"], "exponential", seed)
        return [model.draw(host, "define_guest") for _ in range(2000)]

    first = draws(7, "h1")
    assert first == draws(7, "h1") and first != draws(8, "h1") and first != draws(7, "h2")
    assert 0.45 < sum(first) / len(first) < 0.55
    assert max(first) > 4 * 0.5  # a long tail
    model = LatencyModel.parse(["*:0.5", "power_on:0"], "uniform", 1)
    assert model.draw("h1", "power_on") == 0.0
    assert all(0 <= model.draw("h1", "define_guest") <= 1.0 for _ in range(200))
    assert LatencyModel.parse(["*:0"]) is None  # nothing to wait for


def test_the_driver_spends_each_call_s_latency(tmp_path):
    fake = FakeDriver("h1", str(tmp_path))
    LatencyModel.parse(["list_instance_uuids:0.2"]).apply(fake)
    t0 = time.monotonic()
    assert list(fake.list_instance_uuids()) == []
    assert time.monotonic() - t0 >= 0.2
    t0 = time.monotonic()
    fake.get_available_resource()  # not named, no '*': at once
    assert time.monotonic() - t0 < 0.2


def test_a_bad_latency_in_the_config_is_one_line_exit_2(tmp_path, sqlite_url):
    conf = write_conf(
        tmp_path / "c.conf", tmp_path / "state", sqlite_url, "[fake]\nlatency = define_guest:1,plug_vfi:2\n"
    )
    out = run_cli(conf, "hosts", "list")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "computeflow: error: configuration: [fake] latency "
        "'plug_vfi:2': 'plug_vfi' is not a driver call; did you mean "
        "plug_vif, unplug_vif?"
    ), out.stderr
