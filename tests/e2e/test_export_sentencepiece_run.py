"""A run trained on a model with a SentencePiece tokenizer exports to GGUF through the real CLI: the file's
tokenizer gives the run's ids and its weights the merged run's logits."""

import shutil

import torch
from typer.testing import CliRunner

import tunelab
from tests.export.conftest import family_model
from tests.export.spm_tokenizers import sentencepiece_tokenizer, train_sentencepiece
from tunelab.cli import app
from tunelab.data.io import write_records


def test_lora_run_on_a_sentencepiece_model_exports_to_gguf(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tmp_path / "base"  # a checkpoint folder as Mistral's: config, weights, tokenizer.json + tokenizer.model
    spm = train_sentencepiece(tmp_path / "spm" / "tokenizer.model")
    tok = sentencepiece_tokenizer(spm, "llama")
    family_model("mistral", hidden=64, vocab=1024).save_pretrained(base)
    tok.save_pretrained(base)
    shutil.copy(spm, base / "tokenizer.model")
    data = tmp_path / "d.jsonl"
    write_records(data, [{"instruction": f"皇上, what is {i} plus {i}?", "output": f"{2 * i} 🙂"} for i in range(8)])
    run = tunelab.train({"model": {"name": str(base)}, "data": {"train": str(data), "val_size": 0},
                         "method": {"name": "lora", "r": 4, "alpha": 8},
                         "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-2, "report": False},
                         "output_dir": str(tmp_path / "run")}, progress=False)

    res = CliRunner().invoke(app, ["export", str(run.path), "--format", "gguf", "--quant", "f32",
                                   "--out", str(tmp_path / "g")])
    assert res.exit_code == 0, res.output
    path = next((tmp_path / "g").glob("*.gguf"))
    model, run_tok, template = run.load_model(device="cpu", merged=True)
    back = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    prompt = run_tok.apply_chat_template([{"role": "user", "content": "皇上, what is 3 plus 3? 🦙"}],
                                         add_generation_prompt=True, tokenize=False)
    assert back(prompt)["input_ids"] == run_tok(prompt)["input_ids"] == tok(prompt)["input_ids"]
    assert back.chat_template == template
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    ids = torch.tensor([run_tok(prompt)["input_ids"]])
    with torch.no_grad():
        assert (model(ids).logits - loaded(ids).logits).abs().max().item() <= 1e-5
