"""Few-shot data generation with a language model, filtered before anything is kept.

Each call shows the model `k` seed records (as JSON lines) through its chat template and asks for
new ones in the same format (the Self-Instruct recipe: Wang et al., "Self-Instruct: Aligning
Language Models with Self-Generated Instructions", ACL 2023). The reply is parsed for JSON
objects; an object is kept only when it has the seeds' keys and value types, passes `clean`'s
empty/length checks, and is not a duplicate (exact, then near via MinHash) of the source data or
of an earlier generated record. Every rejected object or reply becomes a rejected row.
"""

from __future__ import annotations

import json
import random
from itertools import count
from typing import Any, Callable, Sequence

from tunelab.data.prepare.clean import clean
from tunelab.data.prepare.dedup import NearIndex
from tunelab.data.prepare.result import PrepResult, RecordLike, positioned, rejected_row
from tunelab.data.prepare.text import record_key

Generator = Callable[[list[dict[str, str]]], str]  # chat messages -> the model's reply text

SYSTEM_PROMPT = "You write training data. Reply with new examples only: one JSON object per line, no other text."


def build_prompt(examples: Sequence[dict[str, Any]], m: int) -> list[dict[str, str]]:
    """Chat messages asking for `m` new records like `examples` (shown one JSON object per line)."""
    keys = ", ".join(sorted({k for e in examples for k in e}))
    shots = "\n".join(json.dumps(e, ensure_ascii=False) for e in examples)
    user = (f"Here are {len(examples)} examples from a dataset, one JSON object per line:\n{shots}\n\n"
            f"Write {m} new examples for the same task, in the same language and with the same keys ({keys}). "
            "Make them different from the examples. Reply with one JSON object per line and nothing else.")
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def extract_json_objects(text: str) -> list[Any]:
    """Every JSON object found in free text (code fences, prose and broken pieces around them are skipped)."""
    dec, out, i = json.JSONDecoder(), [], text.find("{")
    while i != -1:
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            i = text.find("{", i + 1)
            continue
        out.append(obj)
        i = text.find("{", end)
    return out


def _schema(seeds: Sequence[dict[str, Any]]) -> tuple[set[str], set[str], dict[str, type]]:
    """(required keys, allowed keys, value type per key) from the seed records."""
    allowed = {k for s in seeds for k in s}
    required = {k for k in allowed if all(s.get(k) not in (None, "", [], {}) for s in seeds)}
    types = {k: type(next(s[k] for s in seeds if k in s)) for k in allowed}
    return required, allowed, types


def _format_problem(obj: Any, required: set[str], allowed: set[str], types: dict[str, type]) -> str | None:
    if not isinstance(obj, dict):
        return f"not a JSON object ({type(obj).__name__})"
    if missing := sorted(required - obj.keys()):
        return f"missing keys {missing}"
    if extra := sorted(obj.keys() - allowed):
        return f"unexpected keys {extra}"
    wrong = [k for k, v in obj.items() if not isinstance(v, types[k])]
    return f"wrong value type for {wrong}" if wrong else None


def generate_examples(generate: Generator, seeds: Sequence[RecordLike], *, k: int = 3, n: int = 10,
                      per_call: int = 3, seed: int = 0, min_chars: int = 2, max_chars: int | None = 4000,
                      near_threshold: float | None = 0.8, max_calls: int | None = None) -> PrepResult:
    """Ask `generate` for new records from `k` random seed records per call until `n` are kept.

    Stops after `max_calls` calls (default ``2 * n + 2``) even if fewer were kept. Kept records
    are new ones only (not the seeds). Counts: ``calls``, ``parsed`` (JSON objects found), one count
    per rejection reason (``no_json``, ``wrong_format``, ``empty``, ``too_short``, ``too_long``,
    ``exact``, ``near``...) and ``kept``.
    """
    source = [r for r, _ in positioned(seeds)]
    if len(source) < 1 or k < 1 or n < 1:
        raise ValueError(f"need at least one seed record, k >= 1 and n >= 1 (got {len(source)} seeds, k={k}, n={n})")
    required, allowed, types = _schema(source)
    rng = random.Random(seed)
    seen = {record_key(r) for r in source}
    near = NearIndex(near_threshold) if near_threshold is not None else None
    if near is not None:
        for j, r in enumerate(source):
            near.add(("seed", j), near.signature(r))
    result = PrepResult(kept=[])
    max_calls = max_calls if max_calls is not None else 2 * n + 2
    rows = count()
    for call in range(1, max_calls + 1):
        if len(result.kept) >= n:
            break
        result.counts["calls"] += 1
        reply = generate(build_prompt(rng.sample(source, min(k, len(source))), per_call))
        objs = extract_json_objects(reply)
        where = f"generation call {call}"
        if not objs:
            result.counts["no_json"] += 1
            result.rejected.append(rejected_row(next(rows), where, "no_json", {"reply": reply[:2000]},
                                                "the reply holds no JSON object"))
            continue
        for obj in objs:
            result.counts["parsed"] += 1
            reason, detail = "", ""
            if problem := _format_problem(obj, required, allowed, types):
                reason, detail = "wrong_format", problem
            else:
                checked = clean([obj], min_chars=min_chars, max_chars=max_chars)
                if checked.rejected:
                    reason, detail = checked.rejected[0]["reason"], checked.rejected[0].get("detail", "")
                else:
                    obj = checked.kept[0]
                    if record_key(obj) in seen:
                        reason, detail = "exact", "same text as a seed or an earlier generated record"
                    elif near is not None and (hit := near.find(sig := near.signature(obj))):
                        (kind, j), sim = hit
                        reason = "near"
                        detail = f"similarity {sim:.2f} to {'seed' if kind == 'seed' else 'generated'}[{j}]"
            if reason:
                result.counts[reason] += 1
                result.rejected.append(rejected_row(next(rows), where, reason,
                                                    obj if isinstance(obj, dict) else {"value": obj}, detail))
                continue
            seen.add(record_key(obj))
            if near is not None:
                near.add(("generated", len(result.kept)), sig)
            result.kept.append(obj)
    result.kept = result.kept[:n]
    result.counts["kept"] = len(result.kept)
    return result


def hf_generator(model: Any, tokenizer: Any, *, max_new_tokens: int = 256, temperature: float = 0.8,
                 top_p: float = 0.95, seed: int = 0) -> Generator:
    """A `Generator` backed by a loaded causal LM and its tokenizer's chat template (seeded sampling per call)."""
    import torch

    calls = count()

    def generate(messages: list[dict[str, str]]) -> str:
        enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        sample = temperature > 0
        extra = {"temperature": temperature, "top_p": top_p} if sample else {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + next(calls))
            with torch.no_grad():
                out = model.generate(**enc, do_sample=sample, max_new_tokens=max_new_tokens,
                                     pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id, **extra)
        return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)  # (T_new,)

    return generate


def generate_with_model(model: Any, tokenizer: Any, seeds: Sequence[RecordLike], k: int = 3, n: int = 10, *,
                        max_new_tokens: int = 256, temperature: float = 0.8, seed: int = 0,
                        **kwargs: Any) -> PrepResult:
    """New records written by a loaded causal LM from `k` seed examples per prompt; see `generate_examples`.

    `model` may also be a plain `Generator` callable (messages -> reply text) with
    ``tokenizer=None``, which is how tests and API-backed models plug in.
    """
    if tokenizer is None:
        if not callable(model):
            raise TypeError("with tokenizer=None, model must be a callable taking chat messages and returning text")
        gen: Generator = model
    else:
        gen = hf_generator(model, tokenizer, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    return generate_examples(gen, seeds, k=k, n=n, seed=seed, **kwargs)
