"""LLaMA-Factory registries: `data.train: dataset_info.json#name` reads the shared registry's entries (alpaca and
sharegpt formattings, column and tag mappings, ranking sets, file names relative to the registry), each record
checked against the raw file read with json; entries that cannot be read say why."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import tunelab
from tunelab.data.io import DataError
from tunelab.data.pipeline import load_conversations
from tunelab.data.stage_formats import load_kto, load_preference, load_text


@pytest.fixture(scope="module")
def registry(shared_data: Path) -> Path:
    return shared_data / "llamafactory_demo" / "dataset_info.json"


def _raw(registry: Path, name: str):
    entry = json.loads(registry.read_text())[name]
    path = registry.parent / entry["file_name"]
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(path.read_text())


@pytest.mark.parametrize("name", ["identity", "alpaca_en_demo", "alpaca_zh_demo"])
def test_alpaca_entries(registry: Path, name: str) -> None:
    convs, fmt = load_conversations(f"{registry}#{name}")
    raw = _raw(registry, name)
    assert fmt == "alpaca" and len(convs) == len(raw)
    for conv, rec in zip(convs[:50], raw[:50]):
        user = rec["instruction"] + ("\n" + rec["input"] if rec.get("input") else "")
        assert conv.messages[-2:] == [{"role": "user", "content": user}, {"role": "assistant", "content": rec["output"]}]


@pytest.mark.parametrize("name", ["glaive_toolcall_en_demo", "glaive_toolcall_zh_demo"])
def test_sharegpt_entries_with_tools(registry: Path, name: str) -> None:
    convs, fmt = load_conversations(f"{registry}#{name}")
    raw = _raw(registry, name)
    assert fmt == "sharegpt" and len(convs) == len(raw)
    roles = {"human": "user", "gpt": "assistant", "function_call": "assistant", "observation": "tool"}
    for conv, rec in zip(convs[:50], raw[:50]):
        assert [m["role"] for m in conv.messages] == [roles[t["from"]] for t in rec["conversations"]]
        assert [m["content"] for m in conv.messages] == [t["value"] for t in rec["conversations"]]
        has_tools = bool(rec.get("tools")) and json.loads(rec["tools"]) not in ([], {})
        assert (json.loads(conv.tools) if has_tools else conv.tools) == (json.loads(rec["tools"]) if has_tools else None)


def test_ranking_and_kto_entries_with_tag_mappings(registry: Path) -> None:
    pairs, raw = load_preference(f"{registry}#dpo_en_demo"), _raw(registry, "dpo_en_demo")
    assert len(pairs) == len(raw)
    for pair, rec in zip(pairs[:50], raw[:50]):
        assert [m["content"] for m in pair.prompt] == [t["value"] for t in rec["conversations"]]
        assert (pair.chosen, pair.rejected) == (rec["chosen"]["value"], rec["rejected"]["value"])
    kto, raw = load_kto(f"{registry}#kto_en_demo"), _raw(registry, "kto_en_demo")  # tags: role/content/user/assistant
    assert len(kto) == len(raw)
    assert [(k.completion, k.label) for k in kto] == [(r["messages"][-1]["content"], r["label"]) for r in raw]
    assert kto[0].prompt == raw[0]["messages"][:-1]


def test_text_entries_for_pretraining(registry: Path) -> None:
    wiki = load_text(f"{registry}#wiki_demo")  # a .txt file, column prompt -> text
    lines = [x for x in (registry.parent / "wiki_demo.txt").read_text().splitlines() if x.strip()]
    assert [d.text for d in wiki] == lines
    assert [d.text for d in load_text(f"{registry}#c4_demo")] == [r["text"] for r in _raw(registry, "c4_demo")]


def test_entries_that_cannot_be_read_say_why(registry: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no dataset 'identiy'; did you mean identity"):
        load_conversations(f"{registry}#identiy")
    with pytest.raises(DataError, match="glaive_toolcall_en: the entry names no file_name .hf_hub_url instead.; "
                                        "tunelab never downloads"):
        load_conversations(f"{registry}#glaive_toolcall_en")
    with pytest.raises(DataError, match="multimodal columns .images. are not supported"):
        load_conversations(f"{registry}#mllm_demo")
    with pytest.raises(DataError, match=r"file_name 'alpaca_en_demo.json' not found .looked for .*; it is relative "
                                        r"to the registry's folder"):
        shutil.copy(registry, tmp_path / "dataset_info.json")
        load_conversations(f"{tmp_path / 'dataset_info.json'}#alpaca_en_demo")


@pytest.mark.parametrize("file_name", ["../secret.json", "/etc/passwd", "sub/../../secret.json", "link.json"])
def test_a_file_name_outside_the_registrys_folder_is_refused(file_name: str, tmp_path: Path) -> None:
    """A registry may only name files in its own folder: a registry the studio accepted from its library cannot
    make training read (and inspection show) a file from anywhere else."""
    (tmp_path / "secret.json").write_text(json.dumps([{"instruction": "q", "output": "a"}]))
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "link.json").symlink_to(tmp_path / "secret.json")
    (folder / "dataset_info.json").write_text(json.dumps({"x": {"file_name": file_name}}))
    with pytest.raises(DataError, match=f"file_name '{file_name}' leads outside the registry's folder"):
        load_conversations(f"{folder / 'dataset_info.json'}#x")


def test_a_registry_entry_trains_through_the_config(registry: Path, tmp_path: Path) -> None:
    run = tunelab.train({"model": {"name": "tiny-llama"}, "output_dir": str(tmp_path / "r"),
                         "data": {"train": f"{registry}#identity", "max_samples": 8, "max_length": 48,
                                  "val_size": 0.0},
                         "method": {"name": "lora", "r": 2, "alpha": 4},
                         "train": {"max_steps": 1, "batch_size": 4, "report": False}}, progress=False)
    assert run.summary["steps"] == 1 and run.summary["data"]["train_samples"] == 8
    assert run.config.data.train == f"{registry}#identity"  # the run records the registry entry it read


def _data(**data):
    from tunelab.config.loader import build_config

    return build_config({"model": {"name": "tiny-llama"}, "data": data}).data


def test_data_registry_key_names_entries_as_the_hash_spelling_does(registry: Path) -> None:
    """`data.registry` + entry names is `data.train: registry#name`: the same records, the same stored config."""
    reg = str(registry)
    data = _data(registry=reg, train="alpaca_en_demo", eval="identity")
    assert (data.train, data.eval) == (f"{reg}#alpaca_en_demo", f"{reg}#identity")
    assert load_conversations(data.train)[0] == load_conversations(f"{reg}#alpaca_en_demo")[0]
    again = _data(**data.model_dump())  # a run's stored config validates to itself
    assert (again.train, again.eval) == (data.train, data.eval)
    mixed = _data(registry=reg, train=["alpaca_en_demo", {"path": "identity", "weight": 0.5, "eval": "alpaca_zh_demo"}])
    assert [(s.path, s.task, s.eval) for s in mixed.sources()] == [
        (f"{reg}#alpaca_en_demo", "alpaca_en_demo", None),
        (f"{reg}#identity", "identity", f"{reg}#alpaca_zh_demo")]  # each entry is its own task


def test_data_registry_errors_name_the_key(registry: Path) -> None:
    from tunelab.config.loader import ConfigError

    with pytest.raises(ConfigError, match=r"data.registry: 'data/alpaca.jsonl' is not a dataset registry file; give "
                                          r"the path of a LLaMA-Factory dataset_info.json"):
        _data(registry="data/alpaca.jsonl", train="identity")
    with pytest.raises(ConfigError, match=r"data.train\[1\].path: 'other.json#identity' is not an entry name; with "
                                          r"data.registry set .*, name an entry of it .e.g. 'identity'."):
        _data(registry=str(registry), train=["alpaca_en_demo", "other.json#identity"])
    with pytest.raises(ConfigError, match="data.eval: '' is not an entry name"):
        _data(registry=str(registry), train="identity", eval="")
    with pytest.raises(DataError, match="no dataset 'identiy'; did you mean identity"):  # names are checked on read
        load_conversations(_data(registry=str(registry), train="identiy").train)
