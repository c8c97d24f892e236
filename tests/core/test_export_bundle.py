"""A run that cannot merge exports base + adapter side by side, and the pieces reload to the run's logits."""

import pytest
import torch
from typer.testing import CliRunner

import tunelab
from tunelab.cli import app
from tunelab.data.io import write_records


@pytest.fixture(scope="module")
def prompt_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    data = root / "d.jsonl"
    write_records(data, [{"instruction": f"Add {i} and {i}", "output": str(2 * i)} for i in range(8)])
    return tunelab.train({"model": {"name": "tiny-llama"}, "data": {"train": str(data), "val_size": 0},
                          "method": {"name": "prompt", "num_virtual_tokens": 4},
                          "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-2, "report": False},
                          "output_dir": str(root / "run")}, progress=False)


def test_unmergeable_run_exports_a_bundle_that_reloads(prompt_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    res = CliRunner().invoke(app, ["export", str(prompt_run.path), "--format", "merged", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    readme = (tmp_path / "b" / "README.md").read_text()
    assert "cannot be" in readme and "PeftModel.from_pretrained" in readme
    assert (tmp_path / "b" / "base" / "chat_template.jinja").read_text() == prompt_run.chat_template
    rebuilt = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "b" / "base"),
                                        str(tmp_path / "b" / "adapter"))
    model, tok, _ = prompt_run.load_model(device="cpu")
    ids = torch.tensor([tok("Add 3 and 3")["input_ids"]])
    with torch.no_grad():
        plain_peft = rebuilt(input_ids=ids).logits  # (1, 4 virtual + T, V): PEFT keeps the prompt positions
        ours = model(input_ids=ids).logits  # (1, T, V): the run drops them
    torch.testing.assert_close(plain_peft[:, 4:], ours, rtol=1e-5, atol=1e-5)


def test_unmergeable_run_to_gguf_says_what_to_do(prompt_run, tmp_path):
    res = CliRunner().invoke(app, ["export", str(prompt_run.path), "--format", "gguf", "--out", str(tmp_path / "g")])
    assert res.exit_code == 2
    assert "--format merged" in res.output and not (tmp_path / "g").exists()
