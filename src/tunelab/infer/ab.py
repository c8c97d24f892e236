"""A/B routing: a virtual model name split over served variants by weight, sticky per user.

`"chat=runA=90,runB=10"` (CLI) or `{"chat": "runA=90,runB=10"}` (Python) sends 90% of the
requests for model `chat` to `runA` and 10% to `runB`. A request that carries OpenAI's `user`
field is routed by a hash of (route name, user), so one user always meets the same variant
while the weights stay the same; requests without `user` are routed at random. Every routed
request appends one line to a JSONL log (variant, latency, outcome) for later comparison
(`tunelab serve-stats --ab-log`).
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class RouteError(ValueError):
    """A route string is malformed or names a model that is not served."""


@dataclass(frozen=True)
class Route:
    """A virtual model name and its (variant, weight) pairs; weights are relative (need not sum to 100)."""

    name: str
    variants: tuple[tuple[str, float], ...]

    def pick(self, user: str | None, rng: random.Random | None = None) -> str:
        """The variant for one request: a stable hash of `user` when given, else a random draw."""
        total = sum(w for _, w in self.variants)
        if user is not None:
            digest = hashlib.sha256(f"{self.name}\x00{user}".encode()).digest()
            u = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
        else:
            u = (rng or random).random()
        point, acc = u * total, 0.0
        for variant, weight in self.variants:
            acc += weight
            if point < acc:
                return variant
        return self.variants[-1][0]


def parse_route(name: str, text: str) -> Route:
    """Parse `"runA=90,runB=10"` into a Route named `name`; errors say which part is wrong."""
    variants: list[tuple[str, float]] = []
    for part in (p.strip() for p in text.split(",")):
        variant, sep, weight = part.rpartition("=")
        if not sep or not variant.strip():
            raise RouteError(f"route {name!r}: {part!r} is not VARIANT=WEIGHT (example: 'runA=90,runB=10')")
        try:
            w = float(weight)
        except ValueError:
            raise RouteError(f"route {name!r}: weight {weight!r} of {variant!r} is not a number") from None
        if w < 0:
            raise RouteError(f"route {name!r}: weight of {variant!r} is negative ({w}); use 0 or more")
        variants.append((variant.strip(), w))
    names = [v for v, _ in variants]
    if len(set(names)) != len(names):
        raise RouteError(f"route {name!r}: a variant appears twice in {text!r}")
    if sum(w for _, w in variants) <= 0:
        raise RouteError(f"route {name!r}: weights sum to 0; give at least one variant a positive weight")
    return Route(name, tuple(variants))


DEFAULT_ROUTE_NAME = "ab"


def parse_route_arg(arg: str) -> Route:
    """Parse the CLI form `"NAME=runA=90,runB=10"`; the bare `"runA=90,runB=10"` routes the virtual model "ab"."""
    parts = [p.strip() for p in arg.split(",") if p.strip()]
    if parts and all(p.count("=") == 1 and _is_number(p.partition("=")[2]) for p in parts):
        return parse_route(DEFAULT_ROUTE_NAME, arg)
    name, sep, rest = arg.partition("=")
    if not sep or not name.strip() or not rest:
        raise RouteError(f"--route {arg!r}: expected NAME=VARIANT=WEIGHT,... (example: chat=runA=90,runB=10)")
    return parse_route(name.strip(), rest)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class ABRouter:
    """All routes of a server plus the per-variant JSONL log."""

    def __init__(self, routes: Mapping[str, str | Route], served: list[str], log_path: str | Path | None = None,
                 seed: int | None = None) -> None:
        """Parse and check routes against the served model names; raises RouteError naming the problem."""
        self.routes: dict[str, Route] = {}
        for name, spec in routes.items():
            route = spec if isinstance(spec, Route) else parse_route(name, spec)
            if name in served:
                raise RouteError(f"route {name!r} has the name of a served model; pick another virtual name")
            missing = [v for v, _ in route.variants if v not in served]
            if missing:
                raise RouteError(f"route {name!r}: unknown variant(s) {', '.join(missing)}; "
                                 f"served models are {', '.join(served)}")
            self.routes[name] = route
        self.log_path = Path(log_path) if log_path else None
        self.rng = random.Random(seed)
        self._lock = threading.Lock()

    def resolve(self, model: str, user: str | None) -> tuple[str, str | None]:
        """(variant to serve, route name or None) for a requested model name."""
        route = self.routes.get(model)
        if route is None:
            return model, None
        return route.pick(user, self.rng), route.name

    def record(self, route: str, variant: str, user: str | None, latency_s: float, outcome: str,
               completion_tokens: int = 0, **extra: Any) -> None:
        """Append one routed request to the log: one JSON line written by a single call (whole lines only)."""
        if self.log_path is None:
            return
        self.append({"time": time.time(), "route": route, "variant": variant, "user": user,
                     "latency_s": round(latency_s, 6), "outcome": outcome, "completion_tokens": completion_tokens,
                     **extra})

    def append(self, row: dict[str, Any]) -> None:
        """Append one row (a routed request, or a {"type": "feedback"} row from POST /v1/feedback) to the log."""
        if self.log_path is None:
            return
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with self._lock:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(line)


def read_ab_log(path: str | Path) -> list[dict[str, Any]]:
    """The rows of an A/B JSONL log; a bad line raises naming file:line."""
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not JSON ({exc.msg}); the A/B log has one JSON object per line") from None
    return rows


def summarize_ab_log(path: str | Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (route, variant): request count, outcome counts and latency P50/P95 from an A/B JSONL log.

    Feedback rows (POST /v1/feedback) are left out here; `tunelab.infer.traffic.ab_significance` reads them."""
    import numpy as np

    groups: dict[tuple[str, str], list[dict]] = {}
    for row in read_ab_log(path):
        if row.get("type") == "feedback":
            continue
        groups.setdefault((row["route"], row["variant"]), []).append(row)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for key, rows in sorted(groups.items()):
        lat = np.array([r["latency_s"] for r in rows])
        outcomes: dict[str, int] = {}
        for r in rows:
            outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
        out[key] = {"requests": len(rows), "outcomes": outcomes,
                    "p50_s": float(np.percentile(lat, 50)), "p95_s": float(np.percentile(lat, 95))}
    return out
