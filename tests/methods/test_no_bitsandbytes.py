"""bitsandbytes is imported only by a 4-bit method or an 8-bit optimizer, and nothing reaches a hub at run time.

Importing bitsandbytes tries to fetch a kernel from the Hugging Face hub (and prints a warning) on some CPUs;
PEFT imports it whenever it is installed. Each check runs in a fresh interpreter, since this test process
may have imported bitsandbytes already.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path


SRC = str(Path(__file__).resolve().parents[2] / "src")


def run(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    base.update(PYTHONPATH=SRC, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=base, timeout=300)


PLAIN = """
import sys, torch
torch.set_num_threads(1)
from tunelab.config.methods import IA3Cfg, LoraCfg, PromptCfg
from tunelab.config.optim import OptimCfg
from tunelab.engine.optim import build_optimizer
from tunelab.methods import get_method
from tunelab.models import load_model
import huggingface_hub.constants as hub

assert hub.HF_HUB_OFFLINE, "tunelab must switch the hub off before huggingface_hub is imported"
model = get_method("lora").apply(load_model("tiny-llama"), LoraCfg(r=4))
build_optimizer(model, 1e-3, 0.0, torch.device("cpu"), OptimCfg())
lora = get_method("lora")
lora.save(model, "{out}")
reloaded = lora.load_for_inference(load_model("tiny-llama"), "{out}")
get_method("ia3").apply(load_model("tiny-llama"), IA3Cfg())
get_method("prompt").apply(load_model("tiny-llama"), PromptCfg(num_virtual_tokens=2))
assert "bitsandbytes" not in sys.modules, "a plain run imported bitsandbytes"
print("PLAIN-OK")
"""

QLORA_AFTER = """
# qlora in the same process afterwards still gets 4-bit layers wrapped by LoRA
from tunelab.config.methods import QLoraCfg
from peft.tuners.lora import LoraLayer
model = get_method("qlora").apply(load_model("tiny-llama"), QLoraCfg(r=4, target_modules=["q_proj"],
                                                                       compute_dtype="float32"))
import bitsandbytes as bnb
layer = model.base_model.model.model.layers[0].self_attn.q_proj
assert isinstance(layer, LoraLayer) and isinstance(layer.get_base_layer(), bnb.nn.Linear4bit), type(layer)
print("QLORA-OK")
"""


def test_plain_lora_ia3_and_prompt_runs_never_import_bitsandbytes(tmp_path):
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    r = run(PLAIN.format(out=tmp_path / "adapter") + (QLORA_AFTER if has_bnb else ""))
    assert r.returncode == 0 and "PLAIN-OK" in r.stdout, r.stderr[-3000:]
    assert "QLORA-OK" in r.stdout or not has_bnb
    # qlora imports bitsandbytes: its hub-kernel lookup stays offline and quiet
    assert "kernels-community" not in r.stderr and "Hugging Face Hub" not in r.stderr, r.stderr[-2000:]


def test_import_tunelab_switches_the_hub_off_unless_told_otherwise():
    code = ("import tunelab, os; import huggingface_hub.constants as h; "
            "print(os.environ.get('HF_HUB_OFFLINE'), h.HF_HUB_OFFLINE)")
    r = run(code)
    assert r.returncode == 0 and r.stdout.split() == ["1", "True"], r.stderr[-2000:]
    r = run(code, env={"HF_HUB_OFFLINE": "0"})
    assert r.returncode == 0 and r.stdout.split() == ["0", "False"], r.stderr[-2000:]
