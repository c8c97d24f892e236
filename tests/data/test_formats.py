"""Every supported record format parses (on real files), auto-detection says what it found, bad records name file and line."""

import json

import pytest

from tunelab.data.formats import parse_records
from tunelab.data.io import DataError, read_records


@pytest.mark.parametrize("name,fmt,roles", [
    ("llamafactory_demo/alpaca_en_demo.json", "alpaca", ["user", "assistant"]),
    ("llamafactory_demo/glaive_toolcall_en_demo.json", "sharegpt", None),
    ("fudan_news_train.jsonl", "messages", ["system", "user", "assistant"]),
    ("huanhuan.json", "alpaca", ["user", "assistant"]),
])
def test_real_files_detect_and_parse(shared_data, name, fmt, roles):
    convs, found = parse_records(read_records(shared_data / name))
    assert found == fmt
    assert len(convs) > 100
    assert all(c.messages[-1]["role"] == "assistant" for c in convs)
    if roles:
        assert [m["role"] for m in convs[0].messages] == roles


def test_alpaca_system_history_and_input():
    rec = {"instruction": "Translate", "input": "hola", "output": "hello", "system": "be brief",
           "history": [["hi", "hey"]]}
    from tunelab.data.io import Record
    (conv,), fmt = parse_records([Record(rec, "x.json[0]")])
    assert fmt == "alpaca"
    assert conv.messages == [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hey"}, {"role": "user", "content": "Translate\nhola"},
        {"role": "assistant", "content": "hello"}]


def test_sharegpt_roles_map_including_tools(shared_data):
    convs, _ = parse_records(read_records(shared_data / "llamafactory_demo/glaive_toolcall_en_demo.json"))
    roles = {m["role"] for c in convs for m in c.messages}
    assert roles == {"user", "assistant", "tool"}
    assert convs[0].tools and json.loads(convs[0].tools)


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n')
    with pytest.raises(DataError, match=r"d.jsonl:2: not valid JSON"):
        read_records(f)


def test_missing_field_names_file_line_and_field(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "c"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:3: field 'output' is missing"):
        parse_records(read_records(f))


def test_wrong_type_and_unknown_role(tmp_path):
    f = tmp_path / "d.json"
    f.write_text(json.dumps([{"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}]))
    with pytest.raises(DataError, match=r"d.json\[0\]: messages\[1\].role = 'bot'"):
        parse_records(read_records(f))
    f.write_text(json.dumps([{"instruction": ["not", "text"], "output": "a"}]))
    with pytest.raises(DataError, match=r"field 'instruction' must be a string, got list"):
        parse_records(read_records(f))


def test_unknown_shape_and_no_assistant_turn(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"question": "a", "answer": "b"}\n')
    with pytest.raises(DataError, match="cannot tell the format.*Set data.format"):
        parse_records(read_records(f))
    f.write_text('{"messages": [{"role": "user", "content": "q"}]}\n')
    with pytest.raises(DataError, match="d.jsonl:1: no assistant turn"):
        parse_records(read_records(f))
