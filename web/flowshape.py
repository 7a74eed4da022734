"""The planned shape of an operation's flow, for the graph on its page.

The shape is not in the flow log (that only has the steps that ran): it comes
from the flow factory the catalogue names, called with the operation's stored
parameters, exactly as the runner (and taskflow's flow_from_detail on a
resume) builds the flow. So the full graph is known before the first step
runs and stays the same during the run. Factories read configuration through
the process's runtime: the caller must have one installed (the web server's
Conductor does).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module

from taskflow.patterns import unordered_flow

from flows import catalog


@dataclass(frozen=True)
class Step:
    name: str


@dataclass(frozen=True)
class Block:
    """Steps run one after another (`parallel` False) or side by side.
    `retry`: the name of the retry controller that reruns the block on a
    failure, `attempts` its limit."""

    name: str
    parallel: bool
    children: tuple[Step | Block, ...]
    retry: str | None = None
    attempts: int | None = None


Node = Step | Block


@dataclass(frozen=True)
class Plan:
    """The graph of one operation and where its point of no return is."""

    root: Block
    #: Name of the atom (step or retry controller) from whose start on the
    #: operation only goes forward; None: it may be reverted throughout.
    no_return: str | None


class ShapeUnavailable(Exception):
    """The factory could not build the flow (a version gone, odd parameters)."""


def _factory(path: str):
    module, _, attr = path.rpartition(".")
    return getattr(import_module(module), attr)


def _walk(flow) -> Block:
    children: list[Node] = []
    for child in flow:
        children.append(_walk(child) if hasattr(child, "iter_links") else Step(child.name))
    retry = getattr(flow, "retry", None)
    return Block(
        flow.name,
        isinstance(flow, unordered_flow.Flow),
        tuple(children),
        retry.name if retry is not None else None,
        getattr(retry, "_attempts", None) if retry is not None else None,
    )


def steps_in(node: Node) -> list[str]:
    """Every step name under a node, in flow order."""
    if isinstance(node, Step):
        return [node.name]
    return [n for c in node.children for n in steps_in(c)]


def plan(kind_name: str, parameters: dict) -> Plan:
    """The flow the runner would build for this operation."""
    try:
        kind = catalog.get(kind_name)
        flow = _factory(kind.factory)(**parameters)
    except Exception as e:  # noqa: BLE001 - any failure means: no planned graph, say why
        raise ShapeUnavailable(f"{type(e).__name__}: {e}") from None
    root = _walk(flow)
    no_return = kind.no_return_step
    if no_return is None and kind.forward_only:
        # "Past its hold it only goes forward": the step after take_hold.
        names = steps_in(root)
        no_return = names[1] if len(names) > 1 else None
    return Plan(root, no_return)


def fallback(step_names: list[str]) -> Plan:
    """The steps the flow log has seen, in a line (when the factory cannot build)."""
    return Plan(Block("flow", False, tuple(Step(n) for n in step_names)), None)
