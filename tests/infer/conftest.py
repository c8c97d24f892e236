"""Fixtures for the serving tests: two LoRA adapters on tiny-llama and a live server on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import API_KEY, ServerThread, make_adapter


@pytest.fixture(scope="package")
def adapters(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {"a": make_adapter(root / "a", seed=1), "b": make_adapter(root / "b", seed=2)}


@pytest.fixture(scope="package")
def chat_template(tiny_tokenizer) -> str:
    """The template a run would store in chat_template.jinja (here: the tokenizer's ChatML template)."""
    return tiny_tokenizer.chat_template


@pytest.fixture(scope="package")
def specs(adapters, chat_template):
    from tunelab.infer.model_pool import ModelSpec

    return [ModelSpec("base", "tiny-llama", None, chat_template),
            ModelSpec("a", "tiny-llama", str(adapters["a"]), chat_template),
            ModelSpec("b", "tiny-llama", str(adapters["b"]), chat_template)]


@pytest.fixture(scope="package")
def live(specs, tmp_path_factory):
    """A running server: models base/a/b, route ab = a:90 b:10, API key, small limits."""
    from tunelab.infer.server import ServeLimits, create_app

    log = tmp_path_factory.mktemp("ab") / "ab.jsonl"
    app = create_app(specs, api_key=API_KEY, routes={"ab": "a=90,b=10"}, ab_log=log,
                     limits=ServeLimits(max_body_bytes=20_000, max_tokens=8))
    with ServerThread(app) as srv:
        srv.ab_log = log
        srv.app = app
        yield srv


@pytest.fixture()
def client(live):
    from openai import OpenAI

    return OpenAI(base_url=live.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="package")
def reference(adapters):
    """Independent models: a fresh tiny-llama per name, with only its own adapter loaded by PEFT."""
    from peft import PeftModel

    from tunelab.models import load_model

    cache = {}

    def get(name: str):
        if name not in cache:
            model = load_model("tiny-llama").eval()
            if name != "base":
                model = PeftModel.from_pretrained(model, str(adapters[name])).eval()
            cache[name] = model
        return cache[name]

    return get


@pytest.fixture(scope="package")
def embeddings():
    """tiny-llama's input embedding table: the vectors the drift profiles (prompts and outputs) are built on."""
    from tunelab.models import load_model

    return load_model("tiny-llama").get_input_embeddings().weight
