"""ModelPool (one base, many adapters) and the Batcher (left-padded batches grouped by adapter)."""

from __future__ import annotations

import asyncio

import pytest

from .helpers import chat_ids, direct_generate

PROMPTS = ["Hi", "Tell me a long story about dragons, castles and the sea.", "What is 2 + 2?"]


def test_adapters_share_one_copy_of_the_base_weights(live):
    from tunelab.models import load_model

    pool = live.app.state.tunelab.pool
    base, a, b = pool.get("base"), pool.get("a"), pool.get("b")
    assert a.module is b.module is base.module
    assert set(a.module.peft_config) == {"a", "b"}

    def q_proj(served):
        return served.base_module().model.layers[0].self_attn.q_proj

    ptrs = {q_proj(s).base_layer.weight.data_ptr() for s in (base, a, b)}
    assert len(ptrs) == 1
    assert q_proj(a).lora_B["a"].weight.data_ptr() != q_proj(a).lora_B["b"].weight.data_ptr()
    # No hidden second copy: the non-adapter parameters are exactly the plain model's parameters.
    plain = sum(p.numel() for p in load_model("tiny-llama").parameters())
    shared = {p.data_ptr(): p.numel() for n, p in a.module.named_parameters() if "lora_" not in n}
    assert sum(shared.values()) == plain


def _collect(jobs):
    from tunelab.infer.model_pool import Delta, Finish

    out = []
    for job in jobs:
        text, finish = "", None
        while not job.events.empty():
            event = job.events.get_nowait()
            if isinstance(event, Delta):
                text += event.text
            elif isinstance(event, Finish):
                finish = event
        out.append((text, finish))
    return out


def test_left_padded_batch_equals_one_by_one_generation(live, reference, tiny_tokenizer, chat_template):
    from tunelab.infer.model_pool import GenJob, Sampling, run_group

    pool = live.app.state.tunelab.pool
    ids = [chat_ids(tiny_tokenizer, chat_template, p) for p in PROMPTS]
    assert len({len(i) for i in ids}) == 3  # different lengths: the batch really is padded

    async def main():
        loop = asyncio.get_running_loop()
        jobs = [GenJob("a", i, 6, Sampling(temperature=0.0), loop=loop) for i in ids]
        await asyncio.to_thread(run_group, pool.get("a"), jobs)
        await asyncio.sleep(0)  # let the queued call_soon_threadsafe callbacks run
        return _collect(jobs)

    results = asyncio.run(main())
    for prompt_ids, (text, finish) in zip(ids, results):
        expected, n = direct_generate(reference("a"), tiny_tokenizer, prompt_ids, 6)
        assert text == expected
        assert finish.completion_tokens == n and finish.prompt_tokens == len(prompt_ids)


def test_batcher_groups_simultaneous_requests_by_adapter(live, reference, tiny_tokenizer, chat_template):
    from tunelab.infer.model_pool import Batcher, Delta, GenJob, Sampling

    pool = live.app.state.tunelab.pool
    wanted = [("a", PROMPTS[0]), ("b", PROMPTS[1]), ("base", PROMPTS[2]), ("a", PROMPTS[2]), ("b", PROMPTS[0])]

    async def one(batcher, name, prompt):
        job = GenJob(name, chat_ids(tiny_tokenizer, chat_template, prompt), 4, Sampling(temperature=0.0))
        text = ""
        async for event in batcher.generate(job):
            text += event.text if isinstance(event, Delta) else ""
        return text

    async def main():
        # All five are queued before the batcher wakes; the long wait lets them fill one batch of 5.
        batcher = Batcher(pool, max_batch_size=5, wait_ms=10_000)
        await batcher.start()
        try:
            return await asyncio.gather(*(one(batcher, n, p) for n, p in wanted)), batcher.batches
        finally:
            await batcher.stop()

    texts, batches = asyncio.run(main())
    assert batches == 3  # one generate call per adapter (a, b, base)
    for (name, prompt), text in zip(wanted, texts):
        assert text == direct_generate(reference(name), tiny_tokenizer,
                                       chat_ids(tiny_tokenizer, chat_template, prompt), 4)[0]


def test_run_names_with_dots_serve_their_own_adapter(adapters, reference):
    """PEFT refuses '.' in adapter names; a run folder such as sft-v1.2 still serves (and beside sft-v1_2)."""
    import torch

    from tunelab.infer.model_pool import ModelPool, ModelSpec

    pool = ModelPool([ModelSpec("sft-v1.2", "tiny-llama", str(adapters["a"])),
                      ModelSpec("sft-v1_2", "tiny-llama", str(adapters["b"]))])
    ids = torch.tensor([[1, 20, 300, 4000]])
    for name, ref in (("sft-v1.2", "a"), ("sft-v1_2", "b")):
        served = pool.get(name)
        with torch.no_grad(), served.activate():
            got = served.module(input_ids=ids).logits
        with torch.no_grad():
            torch.testing.assert_close(got, reference(ref)(input_ids=ids).logits)


def test_bad_specs_are_refused_with_the_fix(tmp_path):
    from tunelab.infer.model_pool import ModelPool, ModelSpec, SpecError

    with pytest.raises(SpecError, match="adapter_config.json not found"):
        ModelPool([ModelSpec("x", "tiny-llama", str(tmp_path), None)])
    with pytest.raises(SpecError, match="'x' is used twice"):
        ModelPool([ModelSpec("x", "tiny-llama"), ModelSpec("x", "tiny-qwen2")])
    with pytest.raises(SpecError, match="no models to serve"):
        ModelPool([])


def test_spec_with_its_own_saved_tokenizer(tmp_path, tiny_tokenizer, chat_template):
    from tunelab.infer.model_pool import ModelPool, ModelSpec, SpecError

    tiny_tokenizer.save_pretrained(tmp_path / "tokenizer")
    pool = ModelPool([ModelSpec("t", "tiny-llama", None, chat_template, str(tmp_path / "tokenizer"))],
                     load_tokenizer=lambda name: pytest.fail("the base tokenizer must not be loaded"))
    served = pool.get("t")
    assert served.tokenizer is not tiny_tokenizer
    messages = [{"role": "user", "content": "Hello"}]
    assert served.chat_prompt_ids(messages) == chat_ids(tiny_tokenizer, chat_template, "Hello")
    assert tiny_tokenizer.convert_tokens_to_ids("<|im_end|>") in served.stop_ids
    with pytest.raises(SpecError, match="holds no tokenizer_config.json"):
        ModelPool([ModelSpec("t", "tiny-llama", None, None, str(tmp_path))])
