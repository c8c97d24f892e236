"""Inference speed and cost of a model on evaluation prompts: latency p50/p95, tokens/s, ms per token.

`tunelab eval --compare` measures both systems with this function in the same process, on the same
prompts, with the same greedy settings, so the delta is what the tuned weights cost at inference (an
unmerged LoRA adapter, a longer prefix, longer answers). Each prompt is answered alone (batch 1, the
latency one user sees), after one warm-up answer that is not counted (first-call allocation and
kernel selection would otherwise land on the first sample). Timings depend on the machine and its
load; compare numbers from one process, never across machines.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from tunelab.infer.generate import generate_answers

SPEED_KEYS = ("latency_p50_s", "latency_p95_s", "tokens_per_s", "ms_per_token")


def measure_speed(model, tokenizer, template: str, prompts: Sequence[list[dict]], max_new_tokens: int = 64,
                  samples: int = 8, clock=time.perf_counter) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """({latency_p50_s, latency_p95_s, tokens_per_s, ms_per_token, speed_samples}, per-sample timings).

    Up to `samples` prompts are answered one at a time (greedy, `max_new_tokens`). A sample's tokens
    are the tokens it generated, its stop token included (the model computed it). tokens_per_s is the
    total tokens over the total time (not a mean of per-sample rates, which short answers would
    dominate); ms_per_token its inverse in milliseconds: the compute cost of a generated token.
    Percentiles use linear interpolation (numpy's default).
    """
    chosen = list(prompts[:samples])
    if not chosen:
        raise ValueError("no prompts to time; the evaluation data is empty")
    generate_answers(model, tokenizer, template, [chosen[0]], max_new_tokens=max_new_tokens)  # warm-up
    rows = []
    for messages in chosen:
        t0 = clock()
        answer = generate_answers(model, tokenizer, template, [messages], max_new_tokens=max_new_tokens)[0]
        elapsed = clock() - t0
        rows.append({"latency_s": elapsed, "tokens": answer.n_tokens + int(answer.ended)})
    latency = np.array([r["latency_s"] for r in rows])
    tokens = sum(r["tokens"] for r in rows)
    total = float(latency.sum())
    summary = {"latency_p50_s": float(np.percentile(latency, 50)), "latency_p95_s": float(np.percentile(latency, 95)),
               "tokens_per_s": tokens / total if total > 0 else float("nan"),
               "ms_per_token": 1000 * total / tokens if tokens else float("nan"), "speed_samples": len(rows)}
    return summary, rows
