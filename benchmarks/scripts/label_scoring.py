"""Label scoring speed: the prompt's KV cache shared across labels vs one full forward per (prompt, label).

Scores K label answers (`\\boxed{类别}`) for the first N Fudan-news validation prompts with SmolLM2-135M,
once with `continuation_logprobs` (every pair its own forward pass, the previous way) and once with
`option_logprobs` (the prompt once, then all labels from its cache), checks both give the same scores and
writes one JSON object to benchmarks/results/:

    OMP_NUM_THREADS=1 python benchmarks/scripts/label_scoring.py --records 4 --labels 10
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from pathlib import Path

import torch

from tunelab.data.pipeline import load_conversations
from tunelab.data.templates import resolve_template
from tunelab.eval.loglik import continuation_logprobs, option_logprobs
from tunelab.models import load_model, load_tokenizer
from tunelab.utils.io import atomic_write_json

LABELS = ["政治", "财经", "体育", "计算机", "艺术", "历史", "环境", "农业", "医药", "教育",
          "军事", "交通", "能源", "法律", "文学", "哲学", "宗教", "电子", "通信", "矿藏"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/fudan_news_val.jsonl")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--records", type=int, default=4)
    ap.add_argument("--labels", type=int, default=10)
    ap.add_argument("--max-length", type=int, default=256, help="prompt tokens kept (the end, as eval does)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tok = load_tokenizer(a.model)
    model = load_model(a.model, "float32", torch.device("cpu"))
    template = resolve_template(tok, None)
    convs, _ = load_conversations(a.data)
    prompts = [c.messages[:-1] for c in convs[:a.records]]
    labels = [f"\\boxed{{{lab}}}" for lab in LABELS[:a.labels]]
    option_logprobs(model, tok, template, prompts[:1], [labels[:2]], a.batch_size, a.max_length)  # warm up

    t0 = time.perf_counter()
    direct = continuation_logprobs(model, tok, template, [p for p in prompts for _ in labels], labels * len(prompts),
                                   a.batch_size, a.max_length)
    t_direct = time.perf_counter() - t0
    t0 = time.perf_counter()
    cached = option_logprobs(model, tok, template, prompts, [labels] * len(prompts), a.batch_size, a.max_length)
    t_cached = time.perf_counter() - t0

    flat = [s for row in cached for s, _ in row]
    diff = max(abs(x - y) for x, (y, _) in zip(flat, direct))
    result = {"date": dt.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "threads": a.threads, "model": a.model, "records": len(prompts), "labels": len(labels),
              "max_length": a.max_length, "batch_size": a.batch_size,
              "per_pair_forward_s": round(t_direct, 3), "shared_prompt_cache_s": round(t_cached, 3),
              "speedup": round(t_direct / t_cached, 2), "max_abs_score_diff": diff}
    out = Path(a.out or f"benchmarks/results/{result['date']}-cpu-label-scoring.json")
    atomic_write_json(out, result)
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
