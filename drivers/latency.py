"""A latency model for the fake hypervisor, so that benchmarks, demos and
tests can look like a real one: image copies, boots and migrations take
seconds, and a conductor's worth is how many such waits it overlaps.

`[fake] latency` gives seconds per driver call, `METHOD:SECONDS` with `*` for
every call not named (`*:0.05, spawn:2, wait_for_vif_plugged:20`);
`[fake] latency_distribution` draws each call's delay around that mean:
`fixed` (exactly it), `uniform` (0 to twice it) or `exponential` (a long
tail, as real hypervisors have), from a generator seeded with
`[fake] latency_seed` and the host, so a run can be repeated. The delay is
spent before the call does its work, the way a hypervisor answers late.
"""

from __future__ import annotations

import difflib
import functools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from computeflow.errors import ComputeflowError
from drivers import base

DISTRIBUTIONS = ("fixed", "uniform", "exponential")
ANY = "*"


class BadLatencySpec(ComputeflowError, ValueError):
    """A `[fake] latency` entry that cannot be right."""


#: Contract methods that are plumbing, not hypervisor work: never delayed.
_PLUMBING = frozenset(
    {"register_event_listener", "emit_event", "init_host", "cleanup_host", "estimate_instance_overhead"}
)


def contract_methods() -> frozenset[str]:
    """The driver contract's public calls (drivers/base.py): what a latency may name."""
    return frozenset(
        n for n, v in vars(base.ComputeDriver).items() if callable(v) and not n.startswith("_") and n not in _PLUMBING
    )


@dataclass(frozen=True)
class LatencyModel:
    #: Mean seconds per call, by method; ANY for the others.
    means: dict[str, float]
    distribution: str = "fixed"
    seed: int | None = None
    _rngs: dict = field(default_factory=dict, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @classmethod
    def parse(cls, specs: list[str], distribution: str = "fixed", seed: int | None = None) -> LatencyModel | None:
        """The model `[fake] latency` describes (None: no latency); BadLatencySpec
        names the faulty entry and what was expected."""
        known = contract_methods()
        means: dict[str, float] = {}
        for spec in (s.strip() for s in specs):
            if not spec:
                continue
            method, sep, seconds = spec.rpartition(":")
            if not sep or not method:
                raise BadLatencySpec(
                    f"[fake] latency {spec!r}: expected METHOD:SECONDS (METHOD a driver call or {ANY})"
                )
            if method != ANY and method not in known:
                close = difflib.get_close_matches(method, sorted(known), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise BadLatencySpec(f"[fake] latency {spec!r}: {method!r} is not a driver call{hint}")
            try:
                value = float(seconds)
            except ValueError:
                value = -1.0
            if not value >= 0:
                raise BadLatencySpec(f"[fake] latency {spec!r}: seconds must be a number >= 0")
            means[method] = value
        if distribution not in DISTRIBUTIONS:
            raise BadLatencySpec(f"[fake] latency_distribution {distribution!r}: one of {', '.join(DISTRIBUTIONS)}")
        if not any(means.values()):
            return None
        return cls(means, distribution, seed)

    def mean(self, method: str) -> float:
        return self.means.get(method, self.means.get(ANY, 0.0))

    def draw(self, host: str, method: str) -> float:
        """One call's delay in seconds."""
        mean = self.mean(method)
        if mean <= 0 or self.distribution == "fixed":
            return max(mean, 0.0)
        with self._lock:
            rng = self._rngs.get(host)
            if rng is None:
                rng = self._rngs[host] = random.Random(f"{self.seed}:{host}")
            if self.distribution == "uniform":
                return rng.uniform(0, 2 * mean)
            return rng.expovariate(1 / mean)

    def apply(self, driver: base.ComputeDriver) -> base.ComputeDriver:
        """Make every contract call of `driver` answer after its delay."""
        for name in contract_methods():
            if self.mean(name) > 0 and hasattr(driver, name):
                setattr(driver, name, self._delayed(driver.host, name, getattr(driver, name)))
        return driver

    def _delayed(self, host: str, name: str, call: Callable) -> Callable:
        @functools.wraps(call)
        def delayed(*args, **kwargs):
            time.sleep(self.draw(host, name))  # the simulated hypervisor at work
            return call(*args, **kwargs)

        return delayed
