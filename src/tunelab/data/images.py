"""Records with images: the `vision` format, image references and their checks.

Two layouts the field uses are read (both detected by `format: auto`):

- ShareGPT or OpenAI messages with an `images` list and `<image>` placeholders in the text (LLaMA-Factory's
  multimodal format): `{"messages": [{"role": "user", "content": "<image>What colour?"}, ...],
  "images": ["img/1.png"]}`; the k-th `<image>` is the k-th file.
- OpenAI content parts: `{"role": "user", "content": [{"type": "image_url", "image_url": {"url":
  "data:image/png;base64,..."}}, {"type": "text", "text": "What colour?"}]}`, the URL being a base64 data
  URL or a local path (`file://` allowed).

Paths are relative to the data file. Remote URLs (http, https, ftp, ...) are never fetched: a data file must
not make training reach the network. Every image is opened and checked when the record is parsed; a missing,
unreadable or oversized one is a DataError naming the file, the record and the image (or, with
`data.skip_invalid`, the record goes to the run's rejected.jsonl).

Inside tunelab a conversation's text keeps one `IMAGE_TOKEN` per image where it appears, and
`Conversation.images` holds the images in order.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.data.io import DataError, Record

IMAGE_TOKEN = "<image>"
MAX_IMAGE_BYTES = 20 * 1024 * 1024
"""Largest image file (or decoded data URL) accepted, in bytes."""
MAX_IMAGE_PIXELS = 40_000_000
"""Largest width x height accepted (PIL's decompression-bomb guard is 89M; a training image never needs this)."""
REMOTE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
DATA_URL = re.compile(r"^data:(image/[\w.+-]+)?(;[\w=.-]+)*;base64,", re.IGNORECASE)


@dataclass(frozen=True)
class ImageRef:
    """One image of a record: a resolved local path, or the bytes of a data URL; `label` names it in messages."""

    label: str
    path: str | None = None
    data: bytes | None = None

    def open(self):
        """The image as an RGB PIL image."""
        from PIL import Image

        img = Image.open(self.path) if self.path else Image.open(io.BytesIO(self.data or b""))
        return img.convert("RGB")

    def to_json(self) -> str:
        """How the image is written back to a record (the path, or the data URL)."""
        if self.path:
            return self.path
        return "data:image/png;base64," + base64.b64encode(self.data or b"").decode()


def image_error(where: str, index: int, label: str, why: str) -> DataError:
    """The one shape of every image problem: file:line, which image, what is wrong and what to do."""
    return DataError(f"{where}: image {index} ({label}): {why}")


def resolve_image(ref: Any, where: str, index: int, base_dir: Path | None,
                  max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS) -> ImageRef:
    """Check one image reference (a path, file:// URL or base64 data URL) and return it as an ImageRef.

    The image is opened and verified here, so a bad file stops (or is skipped) before any model loads.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise DataError(f"{where}: image {index} must be a path or a data URL string, got {type(ref).__name__}")
    ref = ref.strip()
    short = ref if len(ref) <= 60 else ref[:40] + "..."
    if DATA_URL.match(ref):
        try:
            data = base64.b64decode(ref.split(",", 1)[1], validate=True)
        except (binascii.Error, ValueError):
            raise image_error(where, index, short, "the data URL is not valid base64") from None
        img = ImageRef(f"data URL, {len(data):,} bytes", data=data)
        size = len(data)
    elif ref.lower().startswith("file://"):
        return resolve_image(ref[7:], where, index, base_dir, max_bytes, max_pixels)
    elif REMOTE.match(ref):
        raise image_error(where, index, short, "remote URLs are never fetched (training must not reach the "
                          "network); download the image and give a path relative to the data file, or a base64 "
                          "data URL")
    else:
        path = Path(ref).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise image_error(where, index, ref, f"no such file ({path}); image paths are relative to the data "
                              "file's folder")
        size = path.stat().st_size
        img = ImageRef(ref, path=str(path.resolve()))
    if size > max_bytes:
        raise image_error(where, index, img.label, f"{size:,} bytes, over the {max_bytes:,}-byte limit; "
                          "resize it (training images are resized to a few hundred pixels anyway)")
    check_image(img, where, index, max_pixels)
    return img


def check_image(img: ImageRef, where: str, index: int, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """Open the image header and decode it once; (width, height), or a DataError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(img.path) if img.path else Image.open(io.BytesIO(img.data or b"")) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise image_error(where, index, img.label, f"{w}x{h} pixels, over the {max_pixels:,}-pixel limit; "
                                  "resize it")
            im.load()
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise image_error(where, index, img.label, f"not a readable image ({type(e).__name__}: {e}); "
                          "save it again as PNG or JPEG") from None
    return w, h


def has_images(rec: Record) -> bool:
    """Whether a record uses images (an `images` list, or image content parts in its messages)."""
    if rec.data.get("images"):
        return True
    for key in ("messages", "conversations"):
        turns = rec.data.get(key)
        if isinstance(turns, list):
            for t in turns:
                content = t.get("content") if isinstance(t, dict) else None
                if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") in ("image", "image_url")
                                                     for p in content):
                    return True
    return False


def parse_vision(rec: Record):
    """A record with images -> Conversation whose text holds one IMAGE_TOKEN per image and `images` in order."""
    from tunelab.data.formats import Conversation, parse_messages, parse_sharegpt

    base_dir = Path(rec.source).parent if rec.source else None
    data = dict(rec.data)
    listed = data.pop("images", None) or []
    if not isinstance(listed, list):
        raise DataError(f"{rec.where}: field 'images' must be a list of paths or data URLs")
    inline: list[Any] = []
    if isinstance(data.get("messages"), list):
        data["messages"] = [_flatten_parts(rec, i, m, inline) for i, m in enumerate(data["messages"])]
    if inline and listed:
        raise DataError(f"{rec.where}: images are given both as content parts and in 'images'; use one of the two")
    refs = inline or listed
    plain = Record(data, rec.where, rec.source)
    conv: Conversation = parse_messages(plain) if "messages" in data else parse_sharegpt(plain)
    n_marks = sum(m["content"].count(IMAGE_TOKEN) for m in conv.messages)
    if not listed and not inline:
        return conv
    if n_marks != len(refs):
        raise DataError(f"{rec.where}: {len(refs)} image(s) but {n_marks} {IMAGE_TOKEN} placeholder(s) in the text; "
                        f"put one {IMAGE_TOKEN} where each image goes (in order)")
    for m in conv.messages:
        if IMAGE_TOKEN in m["content"] and m["role"] != "user":
            raise DataError(f"{rec.where}: {IMAGE_TOKEN} in a {m['role']} turn; images belong to user turns")
    conv.images = [resolve_image(r, rec.where, k, base_dir) for k, r in enumerate(refs)]
    return conv


def _flatten_parts(rec: Record, i: int, m: Any, inline: list) -> Any:
    """OpenAI content parts -> text with IMAGE_TOKEN where each image part was; the image refs go to `inline`."""
    if not isinstance(m, dict) or not isinstance(m.get("content"), list):
        return m
    pieces = []
    for j, part in enumerate(m["content"]):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            pieces.append(str(part.get("text", "")))
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            inline.append(url)
            pieces.append(IMAGE_TOKEN)
        elif kind == "image":
            inline.append(part.get("image") or part.get("path") or part.get("url"))
            pieces.append(IMAGE_TOKEN)
        else:
            raise DataError(f"{rec.where}: messages[{i}].content[{j}] has type {kind!r}; use text or image_url")
    return {**m, "content": "".join(pieces)}


def content_parts(text: str) -> list[dict]:
    """Text with IMAGE_TOKENs -> the content parts processors' chat templates take ([{type: image}, {type: text}])."""
    parts: list[dict] = []
    for k, piece in enumerate(text.split(IMAGE_TOKEN)):
        if k:
            parts.append({"type": "image"})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts
