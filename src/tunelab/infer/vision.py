"""Generation with a vision run: the run's processor and template turn messages with images into model inputs.

Messages are tunelab's (text holding one `<image>` per image, tunelab.data.images.IMAGE_TOKEN) with the
images as PIL images in order; the answer stops at the template's end-of-turn tokens like a text run's
(tunelab.infer.generate). Prompts are answered one at a time: image tensors differ in shape per family and
per image, and a VLM on CPU is bound by the image encoder anyway.
"""

from __future__ import annotations

import base64
import binascii
import io
from threading import Thread
from typing import Iterator

import torch

from tunelab.data.images import DATA_URL, IMAGE_TOKEN, MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, REMOTE
from tunelab.data.vision import MODEL_KEYS, process, render_vision
from tunelab.infer.generate import Answer, _gen_kwargs, generation_stop_ids


class ImageInputError(ValueError):
    """An image given to chat/serve cannot be used (remote URL, not an image, too large); says what to send."""


def prompt_inputs(processor, template: str, messages: list[dict], images: list) -> dict[str, torch.Tensor]:
    """(1, T) input_ids, attention mask and image tensors of a prompt ending in the assistant header."""
    n_marks = sum(str(m.get("content", "")).count(IMAGE_TOKEN) for m in messages)
    if n_marks != len(images):
        raise ImageInputError(f"{len(images)} image(s) but {n_marks} {IMAGE_TOKEN} placeholder(s) in the messages")
    return process(processor, render_vision(processor, template, messages, add_generation_prompt=True), images)


def _to_device(inputs: dict, device) -> dict:
    return {k: v.to(device) for k, v in inputs.items() if k in MODEL_KEYS}


@torch.no_grad()
def answer_one(model, processor, template: str, messages: list[dict], images: list, max_new_tokens: int = 128,
               temperature: float = 0.0, top_p: float = 1.0, repetition_penalty: float = 1.0) -> tuple[Answer, int]:
    """(the answer to one conversation with images, the prompt's token count)."""
    model.eval()
    tok = processor.tokenizer
    inputs = _to_device(prompt_inputs(processor, template, messages, images), next(model.parameters()).device)
    width = inputs["input_ids"].shape[1]
    kw = _gen_kwargs(model, tok, template, max_new_tokens, temperature, top_p, repetition_penalty, width)
    row = model.generate(**inputs, **kw)[0, width:].tolist()
    stops = generation_stop_ids(model, tok, template)
    end = next((k for k, t in enumerate(row) if t in stops), None)
    kept = row if end is None else row[:end]
    return Answer(tok.decode(kept, skip_special_tokens=True).strip(), end is not None, len(kept)), width


def generate_vision(model, processor, template: str, items: list[tuple[list[dict], list]],
                    max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                    repetition_penalty: float = 1.0) -> list[Answer]:
    """Answer each (messages, images) pair; greedy by default."""
    return [answer_one(model, processor, template, msgs, images, max_new_tokens, temperature, top_p,
                       repetition_penalty)[0] for msgs, images in items]


def stream_chat_vision(model, processor, template: str, messages: list[dict], images: list,
                       max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                       repetition_penalty: float = 1.1) -> Iterator[str]:
    """Yield the answer to a conversation with images piece by piece as it is generated."""
    from transformers import TextIteratorStreamer

    model.eval()
    tok = processor.tokenizer
    inputs = _to_device(prompt_inputs(processor, template, messages, images), next(model.parameters()).device)
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    kw = _gen_kwargs(model, tok, template, max_new_tokens, temperature, top_p, repetition_penalty,
                     inputs["input_ids"].shape[1])
    thread = Thread(target=lambda: model.generate(**inputs, streamer=streamer, **kw), daemon=True)
    with torch.no_grad():
        thread.start()
        yield from streamer
        thread.join()


def open_image_file(path: str, max_bytes: int = MAX_IMAGE_BYTES):
    """A local image file as an RGB PIL image (size-checked), or ImageInputError naming it."""
    from pathlib import Path

    p = Path(path).expanduser()
    if not p.is_file():
        raise ImageInputError(f"--image {path}: no such file")
    if p.stat().st_size > max_bytes:
        raise ImageInputError(f"--image {path}: {p.stat().st_size:,} bytes, over the {max_bytes:,}-byte limit")
    return decode_image(p.read_bytes(), str(path))


def decode_image(data: bytes, label: str, max_pixels: int = MAX_IMAGE_PIXELS):
    """Image bytes -> RGB PIL image, refusing what is not an image or has too many pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        if img.size[0] * img.size[1] > max_pixels:
            raise ImageInputError(f"{label}: {img.size[0]}x{img.size[1]} pixels, over the {max_pixels:,} limit")
        return img.convert("RGB")
    except ImageInputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageInputError(f"{label}: not a readable image ({type(e).__name__})") from None


def image_from_url(url: str, max_bytes: int = MAX_IMAGE_BYTES):
    """An OpenAI `image_url.url` sent to the server: only base64 data URLs are accepted (never fetched)."""
    if not isinstance(url, str) or not DATA_URL.match(url):
        if isinstance(url, str) and REMOTE.match(url):
            raise ImageInputError("image_url: remote URLs are not fetched by this server; send the image as a "
                                  "base64 data URL (data:image/png;base64,...)")
        raise ImageInputError("image_url: expected a base64 data URL (data:image/png;base64,...)")
    payload = url.split(",", 1)[1]
    if len(payload) * 3 // 4 > max_bytes:
        raise ImageInputError(f"image_url: the image is over the {max_bytes:,}-byte limit")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError("image_url: the data URL is not valid base64") from None
    return decode_image(data, "image_url")


def split_openai_content(messages: list[dict], max_bytes: int = MAX_IMAGE_BYTES) -> tuple[list[dict], list]:
    """OpenAI chat messages whose content may be a list of text/image_url parts -> (tunelab messages with
    `<image>` where each image was, the decoded images in order)."""
    out, images = [], []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            text = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    text.append(str(part.get("text", "")))
                elif kind == "image_url":
                    url = part.get("image_url")
                    images.append(image_from_url(url.get("url") if isinstance(url, dict) else url, max_bytes))
                    text.append(IMAGE_TOKEN)
                else:
                    raise ImageInputError(f"content part of type {kind!r}; use text or image_url")
            content = "".join(text)
        out.append({"role": m.get("role"), "content": content or ""})
    return out, images
