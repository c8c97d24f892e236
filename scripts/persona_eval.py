"""Chat-嬛嬛 before/after (docs/worked-examples.md): loops, unfinished answers and staying in character.

Answers held-out lines of ``huanhuan.json`` (records the example does not train on: from ``--skip`` on,
evenly spread) plus the four fixed prompts of ``tests/stages/fixtures/huanhuan_prompts.json``, greedily,
with the base model and each run, each with plain decoding (repetition penalty 1.0) and with the chat
default (``tunelab.infer.generate.CHAT_REPETITION_PENALTY``). Per system it reports, from
``tunelab.eval.style``: rep-4 (share of repeated 4-grams in an answer; CJK characters count one by one),
the share of loops (rep-4 > 0.2), the share of answers that ended on the template's end token before
``--max-new-tokens``, and the persona proxy: the share of answers using her forms of address
(``HUANHUAN_MARKERS``), all of them (``marker_share``) and those not already in the prompt
(``own_marker_share``: echoing the question does not count). The reference answers' own rates are reported beside them.

Usage: ``python scripts/persona_eval.py base runs/huanhuan --out runs/persona_eval.json``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tunelab.data.pipeline import load_conversations
from tunelab.eval.style import HUANHUAN_MARKERS, ngram_repetition, style_report
from tunelab.infer.generate import CHAT_REPETITION_PENALTY, generate_answers
from tunelab.models import load_model, load_tokenizer
from tunelab.run import Run
from tunelab.utils.io import atomic_write_json

FIXED_PROMPTS = Path(__file__).resolve().parents[1] / "tests" / "stages" / "fixtures" / "huanhuan_prompts.json"


def heldout_prompts(data: Path, skip: int, n: int) -> tuple[list[list[dict]], list[str]]:
    """(prompts, reference answers): ``n`` records of ``data`` from index ``skip`` on, evenly spread."""
    convs = load_conversations(str(data))[0][skip:]
    picked = convs[::max(1, len(convs) // n)][:n]
    return [c.messages[:-1] for c in picked], [c.messages[-1]["content"] for c in picked]


def fixed_prompts() -> list[list[dict]]:
    """The four fixed prompts of the worked example, as user turns."""
    rows = json.loads(FIXED_PROMPTS.read_text(encoding="utf-8"))
    return [[{"role": "user", "content": r["instruction"]}] for r in rows]


def answer_all(model, tok, template: str, prompts: list[list[dict]], max_new_tokens: int,
               penalty: float) -> tuple[dict, list[dict]]:
    """Greedy answers to ``prompts``: (style report, one row per answer)."""
    t0 = time.time()
    answers = generate_answers(model, tok, template, prompts, max_new_tokens, batch_size=8,
                               repetition_penalty=penalty)
    report = style_report([a.text for a in answers], [a.ended for a in answers],
                          prompts=[p[-1]["content"] for p in prompts])
    report |= {"mean_chars": sum(len(a.text) for a in answers) / len(answers), "seconds": round(time.time() - t0, 1)}
    rows = [{"prompt": p[-1]["content"], "answer": a.text, "ended": a.ended, "tokens": a.n_tokens,
             "rep4": ngram_repetition(a.text)} for p, a in zip(prompts, answers)]
    return report, rows


def main() -> None:
    """Command line: evaluate the base model and the given runs; print and save the JSON result."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("systems", nargs="+", help="'base' (the --base model) and/or run folders of "
                    "examples/huanhuan_sft.yaml")
    ap.add_argument("--penalties", type=float, nargs="+", default=[1.0, CHAT_REPETITION_PENALTY],
                    help="repetition penalties to decode with (1.0 = plain)")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/huanhuan.json"))
    ap.add_argument("--skip", type=int, default=240, help="records the example trains on (data.max_samples)")
    ap.add_argument("--n", type=int, default=24, help="held-out prompts")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--base", default="smollm2-135m")
    ap.add_argument("--out", type=Path, default=Path("runs/persona_eval.json"))
    args = ap.parse_args()
    torch.manual_seed(0)  # greedy decoding: nothing is sampled, the seed is only recorded
    prompts, refs = heldout_prompts(args.data, args.skip, args.n)
    prompts += fixed_prompts()
    tok = load_tokenizer(args.base)
    ref_tokens = [len(tok(r, add_special_tokens=False)["input_ids"]) for r in refs]
    result = {"prompts": len(prompts), "heldout": len(refs), "max_new_tokens": args.max_new_tokens,
              "markers": list(HUANHUAN_MARKERS),
              "references": style_report(refs, prompts=[p[-1]["content"] for p in prompts[:len(refs)]]) | {
                  "fit_in_max_new_tokens": sum(t < args.max_new_tokens for t in ref_tokens) / len(refs)},
              "systems": {}, "answers": {}}
    for name in args.systems:
        if name == "base":
            model, tok, template = load_model(args.base), load_tokenizer(args.base), tok.chat_template
        else:
            model, tok, template = Run(name).load_model(device="cpu")
        for penalty in args.penalties:
            key = f"{name} @ repetition_penalty {penalty}"
            result["systems"][key], result["answers"][key] = answer_all(model, tok, template, prompts,
                                                                        args.max_new_tokens, penalty)
            print(key, json.dumps(result["systems"][key]), flush=True)
            atomic_write_json(args.out, result)  # partial results survive an interruption
        del model
    print(json.dumps({k: v for k, v in result.items() if k != "answers"}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
