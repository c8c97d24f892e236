"""Train through tunelab.train, reload the run folder, chat with it; the optim section reaches the loop."""

import json
import math

import pytest
import torch

import tunelab
from tunelab.infer.generate import generate
from tunelab.methods import NotMergeable


def train(tmp_path, addition_file, method: dict, optim: dict | None = None, steps: int = 3):
    cfg = {"model": {"name": "tiny-llama"}, "data": {"train": str(addition_file), "max_length": 64, "val_size": 0.25},
           "method": method, "train": {"max_steps": steps, "batch_size": 4, "lr": 1e-2, "seed": 0},
           "output_dir": str(tmp_path / "run")}
    if optim:
        cfg["optim"] = optim
    return tunelab.train(cfg, progress=False)


@pytest.mark.parametrize("method", [{"name": "prefix", "num_virtual_tokens": 4, "encoder_hidden_size": 16},
                                    {"name": "adapter", "placement": "houlsby", "reduction_factor": 8},
                                    {"name": "prompt", "num_virtual_tokens": 4}],
                         ids=lambda m: m["name"])
def test_prompt_and_adapter_runs_reload_and_chat(tmp_path, addition_file, method):
    run = train(tmp_path, addition_file, method)
    info = run.info
    assert info["method"] == method["name"] and 0 < info["trainable_params"] < info["total_params"]
    model, tok, template = run.load_model(device="cpu")
    again, _, _ = run.load_model(device="cpu")
    ids = torch.tensor([tok("What is 1 plus 2?")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, again(input_ids=ids).logits, rtol=0, atol=0)
    answers = generate(model, tok, template, [[{"role": "user", "content": "What is 1 plus 2?"}]] * 2,
                       max_new_tokens=5)
    assert len(answers) == 2 and answers[0] == answers[1] and isinstance(answers[0], str)
    with pytest.raises(NotMergeable, match="Serve the base model"):
        run.load_model(device="cpu", merged=True)


def test_qlora_run_with_ewc_and_layer_decay(tmp_path, addition_file):
    run = train(tmp_path, addition_file, {"name": "qlora", "r": 4, "alpha": 8, "lora_plus_ratio": 4.0},
                {"layer_decay": 0.8, "ewc": {"lambda_": 10.0, "data": str(addition_file), "samples": 4}})
    assert run.config.optim.ewc.samples == 4
    from safetensors.torch import load_file

    state = load_file(str(run.path / "ewc.safetensors"))  # the loop estimated the Fisher on the reference data
    fisher = [v for k, v in state.items() if k.startswith("fisher.")]
    assert fisher and sum(float(f.sum()) for f in fisher) > 0
    losses = [m["loss"] for m in run.metrics() if "loss" in m]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert json.loads((run.path / "adapter" / "tunelab_quant.json").read_text())["quant_type"] == "nf4"
    model, tok, _template = run.load_model(device="cpu")
    merged, _, _ = run.load_model(device="cpu", merged=True)
    ids = torch.tensor([tok("What is 1 plus 2?")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-2, atol=1e-2)


def test_badam_through_the_loop(tmp_path, addition_file):
    run = train(tmp_path, addition_file, {"name": "full"}, {"name": "badam", "badam": {"switch_interval": 1}}, steps=2)
    model, _, _ = run.load_model(device="cpu")
    from tunelab.models import load_model

    base = dict(load_model("tiny-llama").named_parameters())
    changed = {n.split(".")[2] if n.startswith("model.layers.") else "rest"
               for n, p in model.named_parameters() if not torch.equal(p.detach(), base[n])}
    assert changed == {"0", "1"}  # ascending, one block per step: layer 0 then layer 1; embeddings untouched
