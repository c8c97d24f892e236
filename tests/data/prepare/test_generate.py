"""LLM few-shot generation: parsing and filtering with a stub generator, and a real run with tiny-llama."""

import json

import pytest

from tunelab.data.prepare import generate_examples, generate_with_model
from tunelab.data.prepare.generate import build_prompt, extract_json_objects

SEEDS = [{"instruction": f"把数字{i}翻译成英文", "input": "", "output": f"number {i}"} for i in range(5)]


def test_extract_json_objects_from_free_text():
    text = 'Sure!\n```json\n{"a": 1}\n{"b": {"c": [1, 2]}}\n```\n{broken {"d": "}"} tail'
    assert extract_json_objects(text) == [{"a": 1}, {"b": {"c": [1, 2]}}, {"d": "}"}]


def test_prompt_shows_k_examples_and_keys():
    msgs = build_prompt(SEEDS[:2], 4)
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert json.dumps(SEEDS[1], ensure_ascii=False) in msgs[1]["content"]
    assert "Write 4 new examples" in msgs[1]["content"] and "(input, instruction, output)" in msgs[1]["content"]


def test_stub_generator_output_is_filtered():
    replies = iter([
        "I cannot do that.",                                                       # no JSON at all
        json.dumps(SEEDS[0], ensure_ascii=False) + "\n"                             # copy of a seed
        + '{"instruction": "把数字7翻译成英文", "input": "", "output": "number seven"}\n'  # good
        + '{"instruction": "hi"}\n'                                                 # missing output
        + '{"instruction": "x", "output": "y", "extra": 1}\n'                        # unknown key
        + '{"instruction": "把数字八翻译成英文", "input": "", "output": ""}',            # empty answer
        '[1, 2] {"instruction": "把数字7翻译成英文", "input": "", "output": "number seven"} '  # dup of generated
        '{"instruction": "Translate the number nine into English", "input": "", "output": 9}'  # wrong type
        ' {"instruction": "把数字十二翻译成英文", "input": "", "output": "twelve"}',        # good
    ])
    prompts = []

    def stub(messages):
        prompts.append(messages)
        return next(replies)

    res = generate_with_model(stub, None, SEEDS, k=2, n=2, seed=0)
    assert res.kept == [{"instruction": "把数字7翻译成英文", "input": "", "output": "number seven"},
                        {"instruction": "把数字十二翻译成英文", "input": "", "output": "twelve"}]
    assert len(prompts) == 3 and res.counts["calls"] == 3
    reasons = [r["reason"] for r in res.rejected]
    assert reasons == ["no_json", "exact", "wrong_format", "wrong_format", "empty_output", "exact", "wrong_format"]
    assert res.rejected[2]["detail"] == "missing keys ['output']"
    assert res.rejected[0]["position"] == "generation call 1"
    # the k seed examples shown change from call to call (seeded sampling)
    assert prompts[0][1]["content"] != prompts[1][1]["content"]


def test_near_duplicates_of_seeds_are_removed_and_calls_are_capped():
    long_seed = {"instruction": "Describe the water cycle in simple words for a child in school today",
                 "output": "Water goes up as vapor and comes down as rain."}
    near = dict(long_seed, output=long_seed["output"] + " Yes.")  # word 3-gram Jaccard 20/21
    res = generate_examples(lambda m: json.dumps(near), [long_seed], k=1, n=1, max_calls=2)
    assert res.kept == [] and res.counts["calls"] == 2 and res.counts["near"] == 2
    assert {r["reason"] for r in res.rejected} == {"near"}


def test_tiny_llama_runs_and_invalid_output_is_filtered(tiny_llama, tiny_tokenizer):
    # a random 2-layer model writes noise: every call must be rejected, none kept, nothing crashes
    res = generate_with_model(tiny_llama, tiny_tokenizer, SEEDS, k=1, n=1, max_new_tokens=16, max_calls=2)
    assert res.kept == []
    assert res.counts["calls"] == 2
    assert len(res.rejected) >= 2 and all(r["reason"] in ("no_json", "wrong_format") for r in res.rejected)
    assert all(isinstance(r.get("record"), dict) for r in res.rejected)


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one seed"):
        generate_examples(lambda m: "", [], n=1)
    with pytest.raises(TypeError, match="callable"):
        generate_with_model(object(), None, SEEDS)
