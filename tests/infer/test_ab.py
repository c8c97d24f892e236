"""A/B routing: weighted split, stickiness per user, parsing errors, log summary."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from scipy.stats import binomtest

from tunelab.infer.ab import ABRouter, RouteError, parse_route, parse_route_arg, summarize_ab_log


def test_split_over_400_users_matches_the_weights():
    route = parse_route("chat", "runA=90,runB=10")
    counts = Counter(route.pick(f"user-{i}") for i in range(400))
    assert set(counts) == {"runA", "runB"}
    # Hashing users should look like independent draws with p = 0.1: a two-sided binomial test.
    assert binomtest(counts["runB"], 400, 0.1).pvalue > 0.001
    assert abs(counts["runB"] - 40) <= 4 * (400 * 0.1 * 0.9) ** 0.5


def test_random_routing_without_user_follows_the_weights():
    route = parse_route("chat", "x=1,y=1,z=2")
    rng = random.Random(0)
    counts = Counter(route.pick(None, rng) for _ in range(4000))
    for name, p in {"x": 0.25, "y": 0.25, "z": 0.5}.items():
        assert binomtest(counts[name], 4000, p).pvalue > 0.001


def test_routing_is_sticky_per_user_and_independent_across_routes():
    one, other = parse_route("r1", "a=50,b=50"), parse_route("r2", "a=50,b=50")
    for i in range(50):
        assert len({one.pick(f"u{i}") for _ in range(5)}) == 1
    # the route name is part of the hash: a user is not in the same arm of every experiment
    assert any(one.pick(f"u{i}") != other.pick(f"u{i}") for i in range(50))


def test_zero_weight_variant_is_never_chosen():
    route = parse_route("r", "a=100,b=0")
    assert {route.pick(f"u{i}") for i in range(200)} == {"a"}


@pytest.mark.parametrize("text, message", [
    ("runA", "is not VARIANT=WEIGHT"),
    ("runA=ninety", "weight 'ninety' of 'runA' is not a number"),
    ("runA=-1,runB=2", "negative"),
    ("runA=0,runB=0", "weights sum to 0"),
    ("runA=1,runA=2", "appears twice"),
])
def test_bad_route_strings_say_what_is_wrong(text, message):
    with pytest.raises(RouteError, match=message):
        parse_route("chat", text)


def test_cli_route_form_and_router_checks_variants():
    route = parse_route_arg("chat=a=90,b=10")
    assert route.name == "chat" and route.variants == (("a", 90.0), ("b", 10.0))
    bare = parse_route_arg("runA=90,runB=10")  # the short form routes the virtual model "ab"
    assert bare.name == "ab" and bare.variants == (("runA", 90.0), ("runB", 10.0))
    with pytest.raises(RouteError, match=r"unknown variant\(s\) c; served models are a, b"):
        ABRouter({"chat": "a=1,c=1"}, ["a", "b"])
    with pytest.raises(RouteError, match="has the name of a served model"):
        ABRouter({"a": "a=1,b=1"}, ["a", "b"])
    with pytest.raises(RouteError, match="expected NAME=VARIANT=WEIGHT"):
        parse_route_arg("chat")


def test_log_lines_reload_and_summarize(tmp_path):
    log = tmp_path / "ab.jsonl"
    router = ABRouter({"chat": "a=50,b=50"}, ["a", "b"], log)
    for i, (variant, latency) in enumerate([("a", 0.1), ("a", 0.3), ("b", 0.2), ("a", 0.2)]):
        router.record("chat", variant, f"u{i}", latency, "stop" if i else "error", 3)
    summary = summarize_ab_log(log)
    assert summary[("chat", "a")]["requests"] == 3
    assert summary[("chat", "a")]["outcomes"] == {"error": 1, "stop": 2}
    assert summary[("chat", "a")]["p50_s"] == pytest.approx(0.2)
    assert summary[("chat", "b")]["requests"] == 1
    log.write_text(log.read_text() + "{oops\n")
    with pytest.raises(ValueError, match=r"ab.jsonl:5: not JSON"):
        summarize_ab_log(log)
