"""Image records: format detection, precise errors (file, record, image), skip_invalid, and label masks."""

from __future__ import annotations

import base64
import json

import pytest

from tunelab.data.formats import parse_records
from tunelab.data.io import DataError, read_records
from tunelab.data.templates import IGNORE_INDEX

from .conftest import write_shapes


def records(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return read_records(path)


def test_auto_detects_both_layouts_and_resolves_paths_relative_to_the_file(tmp_path):
    path = write_shapes(tmp_path / "sub", n=4)
    convs, fmt = parse_records(read_records(path))
    assert fmt == "vision"
    assert [len(c.images) for c in convs] == [1, 1, 1, 1]
    assert convs[0].messages[0]["content"] == "<image>What colour?"  # content parts -> one placeholder per image
    assert convs[1].images[0].path == str((tmp_path / "sub" / "img" / "1.png").resolve())


def test_text_only_first_record_still_detects_vision(tmp_path):
    path = write_shapes(tmp_path, n=2)
    text = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    rows = [text] + [json.loads(line) for line in path.read_text().splitlines()]
    convs, fmt = parse_records(records(tmp_path, rows))
    assert fmt == "vision" and [len(c.images) for c in convs] == [0, 1, 1]


def test_base64_data_url_is_read(tmp_path):
    write_shapes(tmp_path, n=1)
    url = "data:image/png;base64," + base64.b64encode((tmp_path / "img" / "0.png").read_bytes()).decode()
    rows = [{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                       {"type": "text", "text": "colour?"}]},
                          {"role": "assistant", "content": "red"}]}]
    (conv,), _ = parse_records(records(tmp_path, rows))
    assert conv.images[0].open().getpixel((0, 0)) == (220, 30, 30)


def one(user, images=None):
    row = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": "red"}]}
    if images is not None:
        row["images"] = images
    return row


@pytest.mark.parametrize("row, message", [
    (one("<image>x", ["missing.png"]), r"d\.jsonl:1: image 0 \(missing\.png\): no such file .*relative to the data file"),
    (one("<image>x", ["https://example.com/a.png"]), r"d\.jsonl:1: image 0 .*remote URLs are never fetched"),
    (one("<image>x", ["data:image/png;base64,@@@"]), r"image 0 .*not valid base64"),
    (one("<image>x", ["notimage.png"]), r"image 0 \(notimage\.png\): not a readable image"),
    (one("<image><image>x", ["img/0.png"]), r"1 image\(s\) but 2 <image> placeholder\(s\)"),
])
def test_bad_images_are_named_with_file_record_and_image(tmp_path, row, message):
    write_shapes(tmp_path, n=1)
    (tmp_path / "notimage.png").write_text("hello", encoding="utf-8")
    with pytest.raises(DataError, match=message):
        parse_records(records(tmp_path, [row]))


def test_oversized_image_is_refused(tmp_path):
    from tunelab.data.images import resolve_image

    write_shapes(tmp_path, n=1)
    with pytest.raises(DataError, match=r"a\.jsonl:3: image 0 \(img/0\.png\): .* over the 10-byte limit"):
        resolve_image("img/0.png", "a.jsonl:3", 0, tmp_path, max_bytes=10)
    with pytest.raises(DataError, match=r"24x20 pixels, over the 100-pixel limit"):
        resolve_image("img/0.png", "a.jsonl:3", 0, tmp_path, max_pixels=100)


def test_skip_invalid_sends_bad_records_to_rejects(tmp_path):
    write_shapes(tmp_path, n=2)
    rows = [one("<image>x", ["img/0.png"]), one("<image>x", ["gone.png"]), one("<image>x", ["img/1.png"])]
    rejects: list[dict] = []
    convs, _ = parse_records(records(tmp_path, rows), rejects=rejects)
    assert len(convs) == 2 and len(rejects) == 1
    assert rejects[0]["where"].endswith("d.jsonl:2") and "gone.png" in rejects[0]["error"]


def test_text_format_refuses_a_record_with_images(tmp_path):
    write_shapes(tmp_path, n=1)
    with pytest.raises(DataError, match="data.format=messages ignores; set data.format to vision"):
        parse_records(records(tmp_path, [one("<image>x", ["img/0.png"])]), "messages")


IMAGE_TOKENS = {"tiny-llava": ("<image>", 16), "tiny-idefics3": ("<image>", 4),
                # Qwen: the 25x20 image is resized to 84x56 px (multiples of 28, at least 56x56), 6x4 patches
                # of 14 px, merged 2x2 -> 6 tokens
                "tiny-qwen2-vl": ("<|image_pad|>", 6), "tiny-qwen2.5-vl": ("<|image_pad|>", 6)}


@pytest.mark.parametrize("name", list(IMAGE_TOKENS))
def test_label_masks_train_only_the_answer(tmp_path, name):
    """Decoded labels are exactly the answer and its end marker; image tokens and the prompt carry no loss."""
    from tunelab.data.vision import tokenize_vision
    from tunelab.models.tiny_vlm import tiny_vlm_dir
    from tunelab.models.vision import load_processor

    proc = load_processor(tiny_vlm_dir(name))
    path = write_shapes(tmp_path, n=2)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows[1]["messages"] += [{"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "yes"}]
    convs, _ = parse_records(records(tmp_path, rows))
    sample = tokenize_vision(proc, proc.chat_template, convs[1], 256)
    tok = proc.tokenizer
    trained = [t for t, lab in zip(sample.input_ids, sample.labels) if lab != IGNORE_INDEX]
    assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(sample.input_ids, sample.labels))
    # an independent reference: the answers as the template writes them, tokenized by the tokenizer alone
    expected = tok("green<|im_end|>\n", add_special_tokens=False)["input_ids"] + \
        tok("yes<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert trained == expected
    assert tok.decode(trained) == "green<|im_end|>\nyes<|im_end|>\n"
    token, count = IMAGE_TOKENS[name]
    image_id = tok.convert_tokens_to_ids(token)
    assert sample.input_ids.count(image_id) == count  # expanded by the processor
    assert all(lab == IGNORE_INDEX for t, lab in zip(sample.input_ids, sample.labels) if t == image_id)
    if name.startswith("tiny-qwen"):  # flattened patches (n_patches, 3 channels x 2 frames x 14 x 14) + their grid
        assert sample.pixels["image_grid_thw"].tolist() == [[1, 4, 6]]
        assert sample.pixels["pixel_values"].shape == (24, 3 * 2 * 14 * 14)
        marks = sample.per_token["mm_token_type_ids"]  # 1 exactly on the image tokens: M-RoPE positions
        assert marks == [int(t == image_id) for t in sample.input_ids]
    else:
        assert sample.pixels["pixel_values"].shape[-2:] == (32, 32)


def test_prompt_longer_than_max_length_is_named(tmp_path):
    from tunelab.data.vision import tokenize_vision
    from tunelab.models.tiny_vlm import tiny_vlm_dir
    from tunelab.models.vision import load_processor

    proc = load_processor(tiny_vlm_dir("tiny-llava"))
    convs, _ = parse_records(read_records(write_shapes(tmp_path, n=1)))
    with pytest.raises(DataError, match=r"shapes\.jsonl:1: the prompt with its image\(s\) is \d+ tokens, more than "
                                         r"data\.max_length=10"):
        tokenize_vision(proc, proc.chat_template, convs[0], 10)


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl"])
def test_a_cut_through_a_later_image_is_named_and_a_cut_after_it_truncates(tmp_path, name):
    from tunelab.data.vision import tokenize_vision
    from tunelab.models.tiny_vlm import tiny_vlm_dir
    from tunelab.models.vision import load_processor

    proc = load_processor(tiny_vlm_dir(name))
    write_shapes(tmp_path, n=2)
    row = {"messages": [{"role": "user", "content": "<image>What colour?"}, {"role": "assistant", "content": "red"},
                        {"role": "user", "content": "<image>And this one?"},
                        {"role": "assistant", "content": "green, like grass in spring"}],
           "images": ["img/0.png", "img/1.png"]}
    (conv,), _ = parse_records(records(tmp_path, [row]))
    full = tokenize_vision(proc, proc.chat_template, conv, 1024)
    last_image = max(k for k, t in enumerate(full.input_ids) if t == proc.image_token_id)
    with pytest.raises(DataError, match=r"d\.jsonl:1: \d+ tokens, and cutting at data\.max_length=\d+ would cut off an "
                                        r"image of a later turn"):
        tokenize_vision(proc, proc.chat_template, conv, last_image)  # the cut keeps all but that image's last token
    cut = tokenize_vision(proc, proc.chat_template, conv, len(full.input_ids) - 2)  # only the answer's end goes
    assert cut.truncated and cut.input_ids == full.input_ids[:-2]
    assert all(len(v) == len(cut.input_ids) for v in cut.per_token.values())


def test_inspect_counts_images_and_marks_the_example(tmp_path):
    from tunelab.data.inspect import inspect_data
    from tunelab.models.tiny_vlm import tiny_vlm_dir
    from tunelab.models.vision import load_processor

    proc = load_processor(tiny_vlm_dir("tiny-llava"))
    path = write_shapes(tmp_path, n=4)
    report = inspect_data(path, proc.tokenizer, None, 256, processor=proc, example_index=1)
    assert report.format == "vision" and report.images["images"] == 4
    assert report.images["width"] == [24, 26, 27] and report.images["height"] == [20, 20, 20]
    assert report.images["image_tokens"] == [16, 16, 16]
    text = report.to_text()
    assert "images: 4 in 4 records" in text and "image tokens per sample: 16/16/16" in text
    assert "⟨image: 16 tokens⟩What colour?" in report.example_text()
    assert report.example_text().endswith("⟦green<|im_end|>\n⟧")


def test_a_text_model_refuses_image_records(tmp_path):
    from tunelab.data.pipeline import tokenize_all
    from tunelab.models import load_tokenizer

    convs, _ = parse_records(read_records(write_shapes(tmp_path, n=2)))
    tok = load_tokenizer("tiny-llama")
    with pytest.raises(DataError, match=r"shapes\.jsonl:1: the record has images but the model is text-only"):
        tokenize_all(tok, tok.chat_template, convs, 64, None)
    rejects: list[dict] = []
    assert tokenize_all(tok, tok.chat_template, convs, 64, rejects) == [] and len(rejects) == 2
