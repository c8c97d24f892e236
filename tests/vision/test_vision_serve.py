"""Serving a vision run: the official openai client sends a base64 image; remote URLs and oversized images are
refused with a 400 that says what to send."""

from __future__ import annotations

import base64

import openai
import pytest

from tests.serve.helpers import ServerThread


@pytest.fixture(scope="module")
def server(llava_run):
    from tunelab.cli.serve import spec_from_run
    from tunelab.infer.server import ServeLimits, create_app

    app = create_app([spec_from_run(llava_run.path)], limits=ServeLimits(max_tokens=8, max_image_bytes=50_000))
    with ServerThread(app) as srv:
        yield srv


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def image_message(url: str, text: str = "What colour?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


def data_url(path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def test_base64_image_answer_equals_direct_generation(client, llava_run, shapes):
    from tunelab.infer.vision import answer_one, open_image_file

    image = shapes.parent / "img" / "1.png"
    name = llava_run.path.name
    resp = client.chat.completions.create(model=name, messages=image_message(data_url(image)), max_tokens=6,
                                          temperature=0)
    model, _, template = llava_run.load_model(device="cpu")
    expected, n_prompt = answer_one(model, llava_run.load_processor(), template,
                                    [{"role": "user", "content": "<image>What colour?"}],
                                    [open_image_file(str(image))], max_new_tokens=6)
    assert resp.choices[0].message.content == expected.text
    assert resp.usage.prompt_tokens == n_prompt and resp.usage.completion_tokens == expected.n_tokens
    stream = client.chat.completions.create(model=name, messages=image_message(data_url(image)), max_tokens=6,
                                            temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected.text


def test_remote_url_is_refused(client, llava_run):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=llava_run.path.name, messages=image_message("https://example.com/a.png"))
    assert err.value.body["code"] == "invalid_image" and "remote URLs are not fetched" in err.value.message


def test_oversized_and_broken_images_are_refused(client, llava_run):
    big = "data:image/png;base64," + base64.b64encode(b"\0" * 60_000).decode()
    with pytest.raises(openai.BadRequestError, match="over the 50,000-byte limit"):
        client.chat.completions.create(model=llava_run.path.name, messages=image_message(big))
    junk = "data:image/png;base64," + base64.b64encode(b"not an image").decode()
    with pytest.raises(openai.BadRequestError, match="not a readable image"):
        client.chat.completions.create(model=llava_run.path.name, messages=image_message(junk))
