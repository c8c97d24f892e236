"""Token lengths of a real SFT dataset, for `tunelab bench --lengths` (throughput depends on lengths, not values).

Tokenizes with tunelab's own pipeline (chat template, max_length truncation) and writes one JSON object:
{"data": path, "tokenizer": name, "max_length": n, "lengths": [..]} in dataset order.

    python benchmarks/scripts/data_lengths.py ../shared/data/llamafactory_demo/alpaca_en_demo.json \
        benchmarks/data/alpaca_en_demo.lengths.json
"""

from __future__ import annotations

import argparse
import statistics

from tunelab.data.pipeline import load_conversations, tokenize_all
from tunelab.data.templates import resolve_template
from tunelab.models import load_tokenizer
from tunelab.utils.io import atomic_write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--tokenizer", default="smollm2-135m")
    ap.add_argument("--max-length", type=int, default=2048)
    a = ap.parse_args()
    tok = load_tokenizer(a.tokenizer)
    convs, fmt = load_conversations(a.data)
    samples = tokenize_all(tok, resolve_template(tok, None), convs, a.max_length, None)
    lengths = [len(s.input_ids) for s in samples]
    atomic_write_json(a.out, {"data": a.data, "format": fmt, "tokenizer": a.tokenizer, "max_length": a.max_length,
                              "lengths": lengths})
    print(f"{a.out}: {len(lengths)} samples, mean {statistics.mean(lengths):.0f}, "
          f"median {statistics.median(lengths):.0f}, max {max(lengths)} tokens")


if __name__ == "__main__":
    main()
