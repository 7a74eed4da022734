"""The flow graph: the planned shape comes from the catalogue's factories
(parallel branches, retried blocks, the point of no return), and the SVG
colours each step by its state and stays compact for a 100-step flow."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from flows import catalog
from web import flowshape, graph

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
FLAVOR = {"name": "m", "vcpus": 1, "ram_mb": 64, "root_gb": 1, "ephemeral_gb": 1, "swap_mb": 16}


def _vifs(n: int) -> list[dict]:
    return [{"id": f"p{i}", "mac": "fa:16:3e:00:00:00", "network": "default"} for i in range(n)]


def _step(name: str, cls: str, attempts: int = 1, error: str | None = None) -> dict:
    return {
        "step": name,
        "class": cls,
        "state": cls.upper(),
        "attempts": attempts,
        "execute_s": 0.01,
        "revert_s": None,
        "error": error,
    }


def _svg(plan, steps) -> ET.Element:
    return ET.fromstring(graph.graph_svg(plan, steps))  # well-formed XML, or this raises


def _nodes(svg: ET.Element) -> dict[str, str]:
    ns = "{http://www.w3.org/2000/svg}"
    return {g.get("data-step"): g.get("class").split()[1] for g in svg.iter(f"{ns}g") if g.get("data-step")}


@sqlite_only
def test_spawn_plan_has_parallel_branches_and_states(conductor):
    plan = flowshape.plan("spawn", {"flavor": FLAVOR, "vifs": _vifs(2)})
    assert plan.no_return is None
    top = plan.root.children
    assert [c.name for c in top[:2]] == ["take_hold", "claim_resources"]
    parallel = top[2]
    assert parallel.parallel and len(parallel.children) == 5  # root disk line, eph, swap, 2 vifs
    assert flowshape.steps_in(parallel.children[0]) == ["ensure_base_image", "create_root_disk"]
    steps = [
        _step("take_hold", "reverted"),
        _step("claim_resources", "reverted"),
        _step("plug_vif_1", "ok", attempts=3),
        _step("wait_running", "failed", error="<boom>"),
    ]
    text = graph.graph_svg(plan, steps)
    nodes = _nodes(ET.fromstring(text))
    assert nodes["wait_running"] == "failed" and nodes["take_hold"] == "reverted"
    assert nodes["plug_vif_1"] == "ok" and nodes["mark_active"] == "pending"
    assert set(nodes) == set(flowshape.steps_in(plan.root))
    assert "×3" in text and "in parallel: 5 branches" in text and "no-return" not in text
    assert "&lt;boom&gt;" in text and "<boom>" not in text


@sqlite_only
@pytest.mark.parametrize(
    "kind,first_forward", [("destroy", "power_off"), ("live_migration", None), ("confirm_resize", "confirm_migration")]
)
def test_forward_only_phase_is_marked(conductor, kind, first_forward):
    plan = flowshape.plan(
        kind,
        {
            "flavor": FLAVOR,
            "vifs": _vifs(1),
            "host": "h1",
            "target_host": "h2",
            "end_state": ["active", "running"],
            "operation": kind,
        },
    )
    assert plan.no_return is not None
    text = graph.graph_svg(plan, [])
    assert text.count('class="no-return"') == 1 and "retried: up to" in text
    if first_forward:
        # The line is drawn above the first forward-only step, below take_hold.
        line_y = float(re.search(r'class="no-return"><line [^>]*y1="([\d.]+)"', text).group(1))
        y = {
            m.group(2): float(m.group(1))
            for m in re.finditer(r'<rect x="[\d.]+" y="([\d.]+)"[^>]*/><text [^>]*>([a-z_]+)</text>', text)
        }
        assert y["take_hold"] < line_y < y[first_forward]


@sqlite_only
def test_every_catalogue_kind_has_a_plan(conductor):
    params = {
        "flavor": FLAVOR,
        "vifs": _vifs(1),
        "host": "h1",
        "target_host": "h2",
        "end_state": ["active", "running"],
        "actions": [],
        "operation": None,
        "shared_storage": False,
        "power_on": True,
        "holds_instance": True,
    }
    for kind in catalog.CATALOG.values():
        plan = flowshape.plan(kind.name, params | {"operation": kind.name})
        assert flowshape.steps_in(plan.root), kind.name
        _svg(plan, [])


def test_a_100_step_flow_stays_compact():
    line = flowshape.Block(
        "big",
        False,
        tuple(flowshape.Step(f"s{i}") for i in range(60))
        + (flowshape.Block("fan", True, tuple(flowshape.Step(f"p{i}") for i in range(40))),),
    )
    plan = flowshape.Plan(line, None)
    svg = _svg(plan, [_step("s0", "ok")])
    assert len(_nodes(svg)) == 100
    width, height = float(svg.get("width")), float(svg.get("height"))
    assert width < 1000  # 40 parallel branches wrap, 4 to a row
    assert height < 60 * 26 + 10 * 26 + 100


def test_unbuildable_flow_falls_back_to_what_ran():
    with pytest.raises(flowshape.ShapeUnavailable):
        flowshape.plan("nope", {})
    plan = flowshape.fallback(["a", "b"])
    assert _nodes(_svg(plan, [_step("a", "ok")])) == {"a": "ok", "b": "pending"}
