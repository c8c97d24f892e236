"""CSV / TSV / Parquet / save_to_disk sources, column mapping, and tool-call conversations."""

from __future__ import annotations

import json

import pytest

from tunelab.config.data import DataCfg
from tunelab.data import cache as tcache
from tunelab.data.formats import parse_records
from tunelab.data.io import DataError, Record, read_records
from tunelab.data.pipeline import load_conversations, prepare_data
from tunelab.data.templates import IGNORE_INDEX, resolve_template, tokenize_conversation


@pytest.fixture()
def rows(shared_data):
    return json.loads((shared_data / "llamafactory_demo/alpaca_en_demo.json").read_text())[:20]


@pytest.fixture()
def reference(shared_data):
    convs, _ = parse_records(read_records(shared_data / "llamafactory_demo/alpaca_en_demo.json")[:20])
    return [c.messages for c in convs]


def test_csv_tsv_parquet_and_saved_dataset_match_json(rows, reference, tmp_path):
    import datasets
    import pandas as pd

    df = pd.DataFrame(rows)
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_csv(tmp_path / "d.tsv", sep="\t", index=False)
    df.to_parquet(tmp_path / "d.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "saved_dict"))
    for name in ("d.csv", "d.tsv", "d.parquet", "saved", "saved_dict"):
        convs, fmt = load_conversations(str(tmp_path / name))
        assert fmt == "alpaca", name
        assert [c.messages for c in convs] == reference, name
    convs, _ = load_conversations(str(tmp_path / "d.csv"))
    where = convs[2].meta["where"]  # the line the row starts on (quoted cells span lines)
    line = (tmp_path / "d.csv").read_text().split("\n")[int(where.rsplit(":", 1)[1]) - 1]
    assert line.startswith(rows[2]["instruction"])


def test_column_mapping_from_config(rows, reference, tmp_path, tiny_tokenizer, monkeypatch):
    import pandas as pd

    monkeypatch.setattr(tcache, "tokenized_root", lambda: tmp_path / "cache" / "tokenized")
    renamed = pd.DataFrame([{"question": r["instruction"], "context": r["input"], "answer": r["output"]} for r in rows])
    renamed.to_csv(tmp_path / "qa.csv", index=False)
    cols = {"instruction": "question", "input": "context", "output": "answer"}
    convs, _ = load_conversations(str(tmp_path / "qa.csv"), columns=cols)
    assert [c.messages for c in convs] == reference
    data = prepare_data(DataCfg(train=str(tmp_path / "qa.csv"), columns=cols, val_size=0.0, max_length=64),
                        tiny_tokenizer, resolve_template(tiny_tokenizer, None), seed=0)
    assert data.stats["train_samples"] == 20 and data.stats["format"] == "alpaca"
    with pytest.raises(DataError, match=r"qa.csv:2: data.columns maps 'output' to column 'reply', which this record "
                                        r"lacks \(it has \['answer', 'context', 'question'\]\)"):
        load_conversations(str(tmp_path / "qa.csv"), columns={"instruction": "question", "output": "reply"})


def test_csv_errors_name_the_line(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text("instruction,output\nhello,world\na,b,c\n")
    with pytest.raises(DataError, match=r"bad.csv:3: more cells than header columns \(2\)"):
        load_conversations(str(f))
    with pytest.raises(DataError, match=r"not one written by datasets' save_to_disk"):
        load_conversations(str(tmp_path))


def _trained_runs(tok, t):
    runs, cur = [], []
    for i, label in zip(t.input_ids, t.labels):
        if label != IGNORE_INDEX:
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    return runs + ([tok.decode(cur)] if cur else [])


def _call_text(calls):
    return "\n".join("<tool_call>\n" + json.dumps({"name": c["name"], "arguments": c["arguments"]}, ensure_ascii=False)
                     + "\n</tool_call>" for c in calls)


@pytest.mark.parametrize("template_name", ["chatml-tools", None])
def test_glaive_tool_calls_render_and_mask(template_name, shared_data, tiny_tokenizer):
    convs, _ = parse_records(read_records(shared_data / "llamafactory_demo/glaive_toolcall_en_demo.json"))
    conv = next(c for c in convs if any(m.get("tool_calls") for m in c.messages) and c.tools)
    tpl = resolve_template(tiny_tokenizer, template_name)
    t = tokenize_conversation(tiny_tokenizer, tpl, conv, 4096)
    assistants = [m for m in conv.messages if m["role"] == "assistant"]
    if template_name == "chatml-tools":  # calls rendered by the template in <tool_call> tags
        expected = [(_call_text(m["tool_calls"]) if m.get("tool_calls") else m["content"]) + "<|im_end|>\n"
                    for m in assistants]
    else:  # no tool support: the call is the JSON text of the turn
        expected = [m["content"] + "<|im_end|>\n" for m in assistants]
    assert _trained_runs(tiny_tokenizer, t) == expected
    text = tiny_tokenizer.decode(t.input_ids)
    prompt = tiny_tokenizer.decode([i for i, lab in zip(t.input_ids, t.labels) if lab == IGNORE_INDEX])
    name = json.loads(conv.tools)[0]["name"]
    assert name in prompt.split("<|im_start|>user")[0]  # the schema is in the (untrained) system turn
    observation = next(m["content"] for m in conv.messages if m["role"] == "tool")
    assert observation in text and observation not in "".join(_trained_runs(tiny_tokenizer, t))


def test_openai_tool_calls_parse_and_train(tiny_tokenizer):
    rec = Record({"tools": [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}],
                  "messages": [{"role": "user", "content": "2+3?"},
                               {"role": "assistant", "content": None, "tool_calls": [
                                   {"id": "c1", "type": "function",
                                    "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 3}"}}]},
                               {"role": "tool", "tool_call_id": "c1", "content": "5"},
                               {"role": "assistant", "content": "It is 5."}]}, "x.json[0]")
    (conv,), fmt = parse_records([rec])
    assert fmt == "messages" and conv.messages[1]["tool_calls"] == [{"name": "add", "arguments": {"a": 2, "b": 3}}]
    t = tokenize_conversation(tiny_tokenizer, resolve_template(tiny_tokenizer, "chatml-tools"), conv, 512)
    assert _trained_runs(tiny_tokenizer, t) == [
        '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call><|im_end|>\n', "It is 5.<|im_end|>\n"]
    bad = Record({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [
        {"function": {"name": "add", "arguments": "{oops"}}]}]}, "x.json[1]")
    with pytest.raises(DataError, match=r"x.json\[1\]: messages\[1\].tool_calls\[0\].function.arguments is not JSON"):
        parse_records([bad])
