"""Uploads and library files that cannot be read are refused with 400 and the reason, checked over the whole file."""

from __future__ import annotations

import json

from tests.studio.conftest import RECORDS, upload


def _big_jsonl() -> bytes:
    return "".join(json.dumps(r) + "\n" for r in RECORDS * 70).encode()  # ~71 KB: past the 64 KB sniffed head


def test_a_bad_byte_past_the_first_64_kb_is_a_400_naming_the_line(client, settings):
    good = _big_jsonl()
    assert len(good) > 65536
    r = upload(client, "late.jsonl", good + '{"instruction": "café", "output": "x"}\n'.encode("latin-1"))
    assert r.status_code == 400, r.text
    assert f"late.jsonl:{len(RECORDS) * 70 + 1}: not UTF-8 text" in r.json()["error"]
    assert "re-save it as UTF-8" in r.json()["error"] and ".upload-" not in r.json()["error"]
    assert list(settings.datasets.iterdir()) == []


def test_deep_nesting_surrogates_and_fake_parquet_are_400(client, settings):
    cases = [
        ("deep.json", b"[" * 6000 + b"]" * 6000, "deep.json: nested too deeply"),
        ("deep.jsonl", b'{"a": ' + b"[" * 500 + b"]" * 500 + b"}\n", "deep.jsonl:1: nested more than 100 levels"),
        ("half.jsonl", b'{"instruction": "\\ud800", "output": "x"}\n', "half.jsonl:1: field 'instruction' holds a "
         "lone UTF-16 surrogate"),
        ("fake.parquet", b"PAR1" + b"\x01" * 100 + b"PAR1", "fake.parquet: not a readable Parquet file"),
        ("wide.json", json.dumps(RECORDS).encode("utf-16"), "wide.json: saved as UTF-16"),
    ]
    for name, content, message in cases:
        r = upload(client, name, content)
        assert r.status_code == 400, (name, r.text)
        assert message in r.json()["error"], (name, r.json())
    assert list(settings.datasets.iterdir()) == []


def test_inspect_of_a_library_file_that_went_bad_is_a_400(client, settings, tiny_tokenizer):
    (settings.datasets / "edited.jsonl").write_bytes(_big_jsonl() + b'{"instruction": "\xff", "output": "x"}\n')
    r = client.get("/api/datasets/edited.jsonl/inspect", params={"model": ""})
    assert r.status_code == 400, r.text
    assert "edited.jsonl:" in r.json()["error"] and "not UTF-8 text" in r.json()["error"]
    assert str(settings.datasets) not in r.json()["error"]  # the library's path on the server stays private
