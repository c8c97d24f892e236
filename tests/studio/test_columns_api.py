"""Column mappings on the dataset screen: re-inspect with a mapping, save it with the library file, train with it."""

from __future__ import annotations

import csv
import io
import json

import yaml

from tests.studio.conftest import RECORDS, upload
from tunelab.data.inspect import inspect_data

MAPPING = {"instruction": "Question Text", "output": "reply"}


def _odd_csv() -> bytes:
    """The alpaca records under columns no format knows."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["id", "Question Text", "reply"], lineterminator="\n")
    w.writeheader()
    for i, r in enumerate(RECORDS):
        w.writerow({"id": i, "Question Text": r["instruction"], "reply": r["output"]})
    return buf.getvalue().encode()


def test_reinspect_with_a_mapping_reads_the_file_as_the_standard_format(client, settings, tiny_tokenizer, tmp_path):
    assert upload(client, "odd.csv", _odd_csv()).status_code == 200
    before = client.get("/api/datasets/odd.csv/inspect").json()
    assert before["format"] == "unrecognized" and before["columns"] == ["id", "Question Text", "reply"]
    assert "cannot tell the format" in before["invalid"][0]["error"]
    assert before["mapping"] == {} and before["saved_columns"] is None

    after = client.get("/api/datasets/odd.csv/inspect", params={"columns": json.dumps(MAPPING)}).json()
    assert after["format"] == "alpaca" and after["mapping"] == MAPPING
    # the same numbers as inspecting the original alpaca records directly
    ref_file = tmp_path / "ref.json"
    ref_file.write_text(json.dumps([{"instruction": r["instruction"], "output": r["output"]} for r in RECORDS]))
    ref = inspect_data(ref_file, tiny_tokenizer, max_length=1024)
    assert after["records"] == ref.records == len(RECORDS) and after["n_invalid"] == 0
    assert after["tokens"]["total"] == sum(ref.token_lengths)
    assert after["tokens"]["trained"] == sum(ref.target_tokens)
    assert [(p["text"], p["trained"]) for p in after["example"]] == [tuple(x) for x in ref.example]


def test_saved_mapping_travels_with_the_file_and_into_a_job(client, settings):
    upload(client, "odd.csv", _odd_csv())
    r = client.put("/api/datasets/odd.csv/columns", json={"columns": MAPPING})
    assert r.status_code == 200 and r.json() == {"name": "odd.csv", "columns": MAPPING}
    assert json.loads((settings.datasets / ".columns" / "odd.csv.json").read_text()) == MAPPING
    listed = {d["name"]: d for d in client.get("/api/datasets").json()}
    assert listed["odd.csv"]["columns"] == MAPPING and ".columns" not in listed
    # inspect without a mapping uses the saved one; an empty mapping looks at the raw file
    assert client.get("/api/datasets/odd.csv/inspect?model=").json()["format"] == "alpaca"
    assert client.get("/api/datasets/odd.csv/inspect?model=&columns={}").json()["format"] == "unrecognized"
    # a job with data.columns = the saved mapping validates with the CLI's rules and keeps it in its YAML
    values = {"model.name": "tiny-llama", "data.train": "datasets/odd.csv", "data.columns": json.dumps(MAPPING)}
    v = client.post("/api/config/validate", json={"name": "m", "values": values})
    assert v.status_code == 200, v.text
    assert yaml.safe_load(v.json()["yaml"])["data"]["columns"] == MAPPING
    # prepared files keep the file's columns, so they keep its mapping too
    out = client.post("/api/datasets/odd.csv/prepare", json={"op": "split", "options": {"val": 0.25}}).json()
    assert {d["name"]: d["columns"] for d in client.get("/api/datasets").json()}[out["outputs"][0]] == MAPPING
    # {} removes it; deleting the file removes its mapping
    assert client.put("/api/datasets/odd.csv/columns", json={"columns": {}}).json()["columns"] == {}
    assert not (settings.datasets / ".columns" / "odd.csv.json").exists()
    client.put("/api/datasets/odd.csv/columns", json={"columns": MAPPING})
    assert client.delete("/api/datasets/odd.csv").status_code == 200
    assert not (settings.datasets / ".columns" / "odd.csv.json").exists()


def test_bad_mappings_are_refused_with_what_to_fix(client, settings):
    upload(client, "odd.csv", _odd_csv())
    cases = [
        ({"instruction": "question"},
         "'instruction' -> 'question': odd.csv has no such column (it has id, Question Text, reply)"),
        ({"answer": "reply"}, "'answer' is not a standard field (choose from instruction, input, output"),
        ({"instruction": "reply", "output": "reply"}, "column(s) 'reply' mapped to more than one field"),
    ]
    for columns, message in cases:
        r = client.put("/api/datasets/odd.csv/columns", json={"columns": columns})
        assert r.status_code == 400 and message in r.json()["error"], r.text
        assert r.json()["error"].startswith("data.columns for odd.csv: ")
        r = client.get("/api/datasets/odd.csv/inspect", params={"columns": json.dumps(columns), "model": ""})
        assert r.status_code == 400 and message in r.json()["error"]
    assert not (settings.datasets / ".columns").exists()
    r = client.get("/api/datasets/odd.csv/inspect", params={"columns": "{instruction: q"})
    assert r.status_code == 400 and r.json()["error"].startswith("columns: not JSON")
    r = client.get("/api/datasets/odd.csv/inspect", params={"columns": '["q"]'})
    assert r.status_code == 400 and "must be a JSON object" in r.json()["error"]
    # a mapped column missing from one record: the record's file:line is named
    upload(client, "ragged.jsonl", b'{"q": "hi", "a": "hello"}\n{"q": "bye"}\n')
    r = client.get("/api/datasets/ragged.jsonl/inspect", params={"columns": json.dumps(
        {"instruction": "q", "output": "a"}), "model": ""})
    assert r.status_code == 400 and r.json()["error"].startswith("ragged.jsonl:2: data.columns maps 'output'")
    for bad in ("..%2F..%2Fetc%2Fpasswd", "..%2Fstudio.db", ".columns", "missing.csv"):
        assert client.put(f"/api/datasets/{bad}/columns", json={"columns": {}}).status_code in (400, 404)
