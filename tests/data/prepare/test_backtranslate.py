"""Back-translation augmentation (zh<->en through a model) and plugging a larger synonym table in."""

from __future__ import annotations

import json
import random

import httpx
import pytest
from typer.testing import CliRunner

from tunelab.data.prepare.augment import load_synonym_groups, synonym_replace, synonym_table, use_synonyms
from tunelab.data.prepare.backtranslate import back_translate, check_paraphrase, endpoint_generator

ZH_EN = {"今天天气很好。": "The weather is nice today.", "请写一首诗。": "Please write a poem.",
         "解释一下。": "Explain it."}
EN_ZH = {"The weather is nice today.": "今天的天气不错。", "Please write a poem.": "请你写一首诗。",
         "Explain it.": "Explain it."}  # the last one comes back in the wrong language


class DictModel:
    """A translator from two tables, counting calls; it reads the text after the prompt's blank line."""

    def __init__(self):
        self.calls = []

    def __call__(self, messages):
        prompt = messages[-1]["content"]
        text = prompt.split("\n\n", 1)[1]
        self.calls.append(text)
        into_english = "into English" in prompt
        return ("Translation: " if into_english else "") + (ZH_EN if into_english else EN_ZH).get(text, text)


def test_round_trip_keeps_answers_and_rejects_non_paraphrases():
    model = DictModel()
    records = [{"instruction": "今天天气很好。", "input": "", "output": "是的。"},
               {"instruction": "请写一首诗。", "input": "", "output": "床前明月光。"},
               {"instruction": "今天天气很好。", "input": "", "output": "不是。"},  # same text: translated once
               {"instruction": "解释一下。", "input": "", "output": "好。"}]
    res = back_translate(records, model, direction="zh-en")
    assert res.kept == [records[0], {"instruction": "今天的天气不错。", "input": "", "output": "是的。"},
                        records[1], {"instruction": "请你写一首诗。", "input": "", "output": "床前明月光。"},
                        records[2], {"instruction": "今天的天气不错。", "input": "", "output": "不是。"},
                        records[3]]
    assert res.counts["back_translated"] == 3 and res.counts["rejected wrong_language"] == 1
    assert res.rejected[0]["reason"] == "back_translation_wrong_language"
    assert "Explain it." in res.rejected[0]["detail"] and res.rejected[0]["record"] == records[3]
    assert model.calls.count("今天天气很好。") == 1  # the prefix "Translation:" was stripped before the way back


def test_paraphrase_checks():
    assert check_paraphrase("今天天气很好。", "今天天气很好。", "zh", 0.5, 2) == "unchanged"
    assert check_paraphrase("今天天气很好。", "今天天气很好，我们去公园散步吧，好不好呀朋友们？", "zh", 0.5, 2) == "length"
    assert check_paraphrase("Hello there.", "你好。", "en", 0.5, 2) == "wrong_language"
    assert check_paraphrase("Hello there.", "", "en", 0.5, 2) == "empty"
    assert check_paraphrase("Hello there.", "Hi there.", "en", 0.5, 2) is None
    # the first leg came back in the source language: not a translation, whatever the way back gives
    assert check_paraphrase("今天天气很好。", "今天的天气不错。", "zh", 0.5, 2, "今天天气好。", "en") == "pivot_wrong_language"
    assert check_paraphrase("今天天气很好。", "今天的天气不错。", "zh", 0.5, 2, "Nice weather.", "en") is None
    with pytest.raises(ValueError, match="use SOURCE-PIVOT"):
        back_translate([], DictModel(), direction="zh-zh")


def test_endpoint_generator_speaks_openai_chat():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "mt"}]})
        body = json.loads(request.content)
        text = body["messages"][-1]["content"].split("\n\n", 1)[1]
        out = (ZH_EN if "into English" in body["messages"][-1]["content"] else EN_ZH).get(text, text)
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": out}}]})

    gen = endpoint_generator("http://mt.local", api_key="k", client=httpx.Client(transport=httpx.MockTransport(handler)))
    res = back_translate([{"text": "请写一首诗。", "label": "x"}], gen)
    assert res.kept[1] == {"text": "请你写一首诗。", "label": "x"}
    body = json.loads(seen[-1].content)
    assert body["model"] == "mt" and body["temperature"] == 0.0
    assert seen[-1].headers["authorization"] == "Bearer k"
    with pytest.raises(ValueError, match="unreachable"):
        endpoint_generator("http://127.0.0.1:9", model="m", timeout_s=2)([{"role": "user", "content": "x"}])


def test_endpoint_generator_on_tunelab_serve(tiny_tokenizer):
    from fastapi.testclient import TestClient

    from tunelab.infer.model_pool import ModelSpec
    from tunelab.infer.server import create_app

    app = create_app([ModelSpec("mt", "tiny-llama", None, tiny_tokenizer.chat_template)])
    with TestClient(app) as client:
        gen = endpoint_generator("http://testserver", client=client, max_tokens=4)
        res = back_translate([{"instruction": "请写一首诗。", "output": "好"}], gen)
    # a random model does not translate: the copy is rejected with its reason, never kept
    assert res.counts["input"] == 1 and res.counts["back_translated"] + len(res.rejected) == 1
    assert all(r["reason"].startswith("back_translation_") for r in res.rejected)


def test_cli_back_translation_with_a_local_model(tmp_path):
    from tunelab.cli import app

    src = tmp_path / "zh.jsonl"
    src.write_text(json.dumps({"instruction": "请写一首诗。", "input": "", "output": "好"}, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    out = tmp_path / "zh.bt.jsonl"
    res = CliRunner().invoke(app, ["data", "augment", str(src), "-o", str(out), "--op", "delete", "--rate", "0",
                                   "--back-translate", "zh-en", "--bt-with", "tiny-llama", "--max-new-tokens", "4"])
    assert res.exit_code == 0, res.output
    side = [json.loads(x) for x in (tmp_path / "zh.bt.rejected.jsonl").read_text(encoding="utf-8").splitlines()] \
        if (tmp_path / "zh.bt.rejected.jsonl").exists() else []
    kept = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert len(kept) + len(side) == 2  # the original, plus the copy or its rejection
    res = CliRunner().invoke(app, ["data", "augment", str(src), "--back-translate", "zh-en"])
    assert res.exit_code != 0 and "--bt-with" in res.output


@pytest.fixture()
def restore_synonyms():
    yield
    use_synonyms()


def test_plugged_synonym_files(tmp_path, restore_synonyms):
    cilin = tmp_path / "cilin.txt"
    cilin.write_text("Aa01A01= 人 士 人物 人士\nAa01A02# 男女 男女老少\nAa01A03@ 孤\n// comment\n\n",
                     encoding="utf-8")
    plain = tmp_path / "mine.txt"
    plain.write_text("炫酷, 很酷, 帅气\nswift quick fast\n", encoding="utf-8")
    js = tmp_path / "more.json"
    js.write_text(json.dumps({"zh": [["电脑", "计算机"]], "en": [["car", "automobile"]]}, ensure_ascii=False))
    assert load_synonym_groups(cilin) == [["人", "士", "人物", "人士"]]
    assert load_synonym_groups(plain) == [["炫酷", "很酷", "帅气"], ["swift", "quick", "fast"]]
    shipped = len(synonym_table())
    assert "炫酷" not in synonym_table()
    n = use_synonyms([cilin, plain, js])
    assert n > 4 and set(synonym_table()["炫酷"]) == {"很酷", "帅气"} and len(synonym_table()) > shipped
    assert synonym_replace("这个设计真炫酷", random.Random(0), 1.0) in ("这个设计真很酷", "这个设计真帅气")
    use_synonyms([plain], replace=True)
    assert set(synonym_table()) == {"炫酷", "很酷", "帅气", "swift", "quick", "fast"}
    use_synonyms()
    assert len(synonym_table()) == shipped
    bad = tmp_path / "bad.json"
    bad.write_text('{"zh": ["notagroup"]}')
    with pytest.raises(ValueError, match="bad.json: group 0 is not a list of words"):
        load_synonym_groups(bad)


def test_cli_synonyms_option(tmp_path, restore_synonyms):
    from tunelab.cli import app

    plain = tmp_path / "mine.txt"
    plain.write_text("炫酷 很酷\n", encoding="utf-8")
    src = tmp_path / "d.jsonl"
    src.write_text(json.dumps({"instruction": "这个设计炫酷", "output": "是"}, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    out = tmp_path / "o.jsonl"
    res = CliRunner().invoke(app, ["data", "augment", str(src), "-o", str(out), "--rate", "1", "--synonyms",
                                   str(plain), "--synonyms-only"])
    assert res.exit_code == 0, res.output
    assert "synonyms: 1 groups in use" in res.output
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert rows[1]["instruction"] == "这个设计很酷" and rows[1]["output"] == "是"
