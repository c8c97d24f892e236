"""Label/option scoring from a shared prompt cache equals the per-pair full forward; eval leads with task metrics."""

from __future__ import annotations

import json

import pytest

from tunelab.eval.evaluate import score_model, short_reference_note
from tunelab.eval.loglik import continuation_logprobs, option_logprobs

PROMPTS = [
    [{"role": "system", "content": "Classify the news."}, {"role": "user", "content": "Stocks fell sharply today."}],
    [{"role": "user", "content": "体育新闻：主队三比一获胜。"}],
]
# labels of different token lengths (1 to ~9 tokens), more of them than one batch holds
OPTIONS = [["a", "sports", "\\boxed{财经}", "politics of the world today", "computer science", "x y z w"],
           ["体育", "\\boxed{政治}", "b"]]


@pytest.mark.parametrize("model_name", ["tiny_llama", "tiny_qwen2"])
def test_cached_option_scores_equal_the_per_pair_forward(model_name, tiny_tokenizer, request):
    model = request.getfixturevalue(model_name)
    template = tiny_tokenizer.chat_template
    lengths = {len(tiny_tokenizer(o, add_special_tokens=False)["input_ids"]) for opts in OPTIONS for o in opts}
    assert len(lengths) >= 4  # the options really differ in length, so padding is exercised
    cached = option_logprobs(model, tiny_tokenizer, template, PROMPTS, OPTIONS, batch_size=4)
    direct = continuation_logprobs(model, tiny_tokenizer, template,
                                   [p for p, opts in zip(PROMPTS, OPTIONS) for _ in opts],
                                   [o for opts in OPTIONS for o in opts], batch_size=4)
    flat = [s for row in cached for s in row]
    assert [n for _, n in flat] == [n for _, n in direct]
    assert [s for s, _ in flat] == pytest.approx([s for s, _ in direct], rel=1e-5, abs=1e-4)
    # truncation keeps the prompt's last tokens in both paths
    short = option_logprobs(model, tiny_tokenizer, template, PROMPTS[:1], OPTIONS[:1], max_length=6)
    direct_short = continuation_logprobs(model, tiny_tokenizer, template, PROMPTS[:1] * len(OPTIONS[0]), OPTIONS[0],
                                         max_length=6)
    assert [s for s, _ in short[0]] == pytest.approx([s for s, _ in direct_short], rel=1e-5, abs=1e-4)


def test_option_scoring_refuses_empty_options(tiny_llama, tiny_tokenizer):
    with pytest.raises(ValueError, match="has no tokens"):
        option_logprobs(tiny_llama, tiny_tokenizer, tiny_tokenizer.chat_template, PROMPTS[:1], [["a", ""]])
    with pytest.raises(ValueError, match="2 prompts but 1 option lists"):
        option_logprobs(tiny_llama, tiny_tokenizer, tiny_tokenizer.chat_template, PROMPTS, [["a"]])


def test_short_reference_note():
    assert short_reference_note([1, 1, 2]) == ("references are short (median 1 tokens); loss/perplexity reflect the "
                                               "reference wording, not task success")
    assert short_reference_note([2, 7]) is not None  # median 4.5
    assert short_reference_note([3, 5, 9]) is None
    assert short_reference_note([]) is None


def test_eval_results_lead_with_task_metrics(tiny_llama, tiny_tokenizer, tmp_path):
    data = tmp_path / "capitals.json"
    data.write_text(json.dumps([{"instruction": f"Capital of {c}?", "input": "", "output": a} for c, a in
                                [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome")]]), encoding="utf-8")
    results, rows = score_model(tiny_llama, tiny_tokenizer, tiny_tokenizer.chat_template, str(data),
                                metrics=["contains", "exact_match"], max_new_tokens=2)
    assert list(results) == ["contains", "exact_match", "loss", "perplexity", "n", "note"]
    assert results["note"].startswith("references are short (median 1 tokens)")
    assert [r["reference"] for r in rows] == ["Paris", "Tokyo", "Rome"]
    data.write_text(json.dumps([{"instruction": "Say it.", "input": "",
                                 "output": "The quick brown fox jumps over the lazy dog."}]), encoding="utf-8")
    results, _ = score_model(tiny_llama, tiny_tokenizer, tiny_tokenizer.chat_template, str(data),
                             metrics=["exact_match"], max_new_tokens=2)
    assert list(results) == ["exact_match", "loss", "perplexity", "n"]


def test_a_model_without_a_cache_takes_the_per_pair_path(tiny_llama, tiny_tokenizer):
    import torch

    class NoCache(torch.nn.Module):
        """A causal LM wrapper that never returns a cache, like a model with caching unsupported."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.full_passes = 0

        def forward(self, **kw):
            self.full_passes += kw.get("use_cache") is False  # the per-pair path
            out = self.inner(**kw)
            out.cache = None
            return out

    template = tiny_tokenizer.chat_template
    wrapped = NoCache(tiny_llama)
    got = option_logprobs(wrapped, tiny_tokenizer, template, PROMPTS, OPTIONS, batch_size=4)
    assert wrapped.full_passes == 3  # 6 options of prompt 1 in two batches of 4, 3 options of prompt 2 in one
    want = option_logprobs(tiny_llama, tiny_tokenizer, template, PROMPTS, OPTIONS, batch_size=4)
    assert [[n for _, n in row] for row in got] == [[n for _, n in row] for row in want]
    assert [s for row in got for s, _ in row] == pytest.approx([s for row in want for s, _ in row], rel=1e-5, abs=1e-4)
