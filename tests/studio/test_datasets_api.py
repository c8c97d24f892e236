"""Dataset upload, library and inspection through the HTTP API."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from tests.studio.conftest import RECORDS, upload
from tunelab.data.formats import detect_format
from tunelab.data.io import read_records


def test_upload_then_inspect_matches_the_data_library(client, settings, alpaca_bytes, tiny_tokenizer):
    r = upload(client, "hello.json", alpaca_bytes)
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "hello.json", "path": "datasets/hello.json"}
    saved = settings.datasets / "hello.json"
    assert json.loads(saved.read_text()) == RECORDS
    assert [d["name"] for d in client.get("/api/datasets").json()] == ["hello.json"]

    info = client.get("/api/datasets/hello.json/inspect").json()
    recs = read_records(saved)
    assert info["format"] == detect_format(recs[0]) == "alpaca"
    assert info["records"] == len(RECORDS) and info["n_invalid"] == 0
    assert sum(b["count"] for b in info["histogram"]) == len(RECORDS)
    # the trained span of the example is exactly the first answer (plus the end-of-turn token)
    trained = "".join(p["text"] for p in info["example"] if p["trained"])
    assert trained.startswith(RECORDS[0]["output"])
    shown = "".join(p["text"] for p in info["example"])
    assert RECORDS[0]["instruction"] in shown and RECORDS[0]["instruction"] not in trained


def test_csv_and_parquet_uploads_are_read_as_data(client, settings):
    csv_text = "instruction,input,output\nhi,,hello\nbye,,goodbye\n"
    assert upload(client, "small.csv", csv_text.encode()).status_code == 200
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(RECORDS[:3]), buf)
    assert upload(client, "small.parquet", buf.getvalue()).status_code == 200
    assert client.get("/api/datasets/small.csv/inspect?model=").json()["records"] == 2
    assert client.get("/api/datasets/small.parquet/inspect?model=").json()["records"] == 3


def test_traversal_names_stay_inside_the_library(client, settings, alpaca_bytes, tmp_path):
    r = upload(client, "../../etc/passwd", alpaca_bytes)
    assert r.status_code == 400 and "unsupported file type" in r.json()["error"]
    r = upload(client, "../../../passwd.json", alpaca_bytes)
    assert r.status_code == 200 and r.json()["name"] == "passwd.json"
    assert (settings.datasets / "passwd.json").is_file()
    assert not (tmp_path / "passwd.json").exists()
    r = upload(client, "..\\..\\evil.jsonl", b'{"text": "x"}\n')
    assert r.json()["name"] == "evil.jsonl"
    for bad in ("..%2F..%2Fetc%2Fpasswd", "..%2Fstudio.db", ".hidden.json"):
        assert client.get(f"/api/datasets/{bad}/inspect").status_code in (400, 404)
        assert client.delete(f"/api/datasets/{bad}").status_code in (400, 404)
    assert (settings.db).is_file()


def test_uploads_never_overwrite(client, settings, alpaca_bytes):
    assert upload(client, "data.json", alpaca_bytes).json()["name"] == "data.json"
    other = json.dumps(RECORDS[:2]).encode()
    assert upload(client, "data.json", other).json()["name"] == "data-2.json"
    assert json.loads((settings.datasets / "data.json").read_text()) == RECORDS
    assert json.loads((settings.datasets / "data-2.json").read_text()) == RECORDS[:2]


def test_oversized_upload_is_refused_and_leaves_nothing(client, settings):
    big = b"[" + b",".join([b'{"text": "' + b"x" * 1000 + b'"}'] * 1200) + b"]"  # ~1.2 MB, limit 1 MB
    r = upload(client, "big.json", big)
    assert r.status_code == 413 and "upload limit of 1 MB" in r.json()["error"]
    assert list(settings.datasets.iterdir()) == []


def test_bad_content_is_refused_with_its_reason(client, settings):
    r = upload(client, "broken.jsonl", b'{"instruction": "a", "output": "b"}\n{"instruction": oops}\n')
    assert r.status_code == 400
    assert "broken.jsonl:2" in r.json()["error"]  # names the upload and the line, not a temp file
    r = upload(client, "bin.jsonl", b"\x00\x01\x02binary")
    assert r.status_code == 400 and "binary content" in r.json()["error"]
    r = upload(client, "fake.parquet", b'{"not": "parquet"}')
    assert r.status_code == 400 and "not a Parquet file" in r.json()["error"]
    r = upload(client, "script.py", b"import os\n")
    assert r.status_code == 400 and "unsupported file type" in r.json()["error"]
    r = upload(client, "empty.json", b"")
    assert r.status_code == 400 and "empty" in r.json()["error"]
    assert list(settings.datasets.iterdir()) == []


def test_prepare_dedup_and_split_write_library_files(client, settings):
    rows = RECORDS + RECORDS[:4]  # 4 exact duplicates
    upload(client, "dup.json", json.dumps(rows).encode())
    r = client.post("/api/datasets/dup.json/prepare", json={"op": "dedup", "options": {"mode": "exact"}}).json()
    assert r["outputs"] == ["dup.dedup.jsonl"] and r["counts"]["exact"] == 4
    kept = [x.data for x in read_records(settings.datasets / "dup.dedup.jsonl")]
    assert kept == RECORDS
    r = client.post("/api/datasets/dup.dedup.jsonl/prepare", json={"op": "split", "options": {"val": 0.25}}).json()
    train = [x.data for x in read_records(settings.datasets / "dup.dedup.train.jsonl")]
    val = [x.data for x in read_records(settings.datasets / "dup.dedup.val.jsonl")]
    assert (len(train), len(val)) == (9, 3)
    assert sorted(map(json.dumps, train + val)) == sorted(map(json.dumps, RECORDS))
    r = client.post("/api/datasets/dup.json/prepare", json={"op": "shred"})
    assert r.status_code == 400 and "choose from clean, dedup, split" in r.json()["error"]
