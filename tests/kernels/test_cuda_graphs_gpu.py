"""On CUDA: train.speed.cuda_graphs=true captures the compiled decoder layers and trains like the uncaptured run.

Both runs compile the same layers (bf16 autocast, packed rows padded to data.max_length); the captured one
replays them as CUDA graphs, evaluation batches included (eval_every 3: training, evaluation, training again).
Tolerance as in test_speed_gpu.py: first step rtol 2e-2, the curve rtol 5e-2; LoRA dropout 0 there. The
in-memory test checks what the runs cannot see: replays draw new LoRA-dropout masks, the graphs are really
captured, and generation after the block matches generation before it (nothing replays a training graph).
"""

import pytest
import torch

import tunelab
from tests.kernels.test_speed_gpu import tiny_llama_name
from tunelab.config import LoraCfg, TrainCfg
from tunelab.config.speed import SpeedCfg
from tunelab.kernels.regions import CheckpointedLayer
from tunelab.kernels.train import speed_context
from tunelab.kernels.varlen import position_ids_from_lengths
from tunelab.methods import get_method
from tunelab.models import load_model
from tunelab.training.lm_loss import sft_loss

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def cfg(data, out, model_name, graphs: bool) -> dict:
    return {"model": {"name": model_name},
            "data": {"train": str(data), "max_length": 64, "val_size": 0.25, "packing": True},
            "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
            "train": {"max_steps": 6, "batch_size": 2, "lr": 1e-3, "seed": 0, "report": False, "device": "cuda",
                      "eval_every": 3, "log_every": 1, "speed": {"cuda_graphs": graphs}},
            "output_dir": str(out)}


def test_graphs_train_like_compiled_layers_and_the_run_generates_after(tmp_path, tmp_path_factory, addition_file,
                                                                        capfd):
    name = tiny_llama_name(tmp_path_factory)
    graphs = tunelab.train(cfg(addition_file, tmp_path / "graphs", name, True), progress=True)
    line = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("speed:")]
    assert line and "cuda_graphs" in line[0].split("; off:")[0], line
    plain = tunelab.train(cfg(addition_file, tmp_path / "compiled", name, False), progress=False)
    a = [m["loss"] for m in graphs.metrics() if "loss" in m]
    b = [m["loss"] for m in plain.metrics() if "loss" in m]
    assert len(a) == len(b) == 6
    assert a[0] == pytest.approx(b[0], rel=2e-2)
    assert a == pytest.approx(b, rel=5e-2)
    ea = [m["eval_loss"] for m in graphs.metrics() if "eval_loss" in m]
    eb = [m["eval_loss"] for m in plain.metrics() if "eval_loss" in m]
    assert len(ea) == len(eb) == 2 and ea == pytest.approx(eb, rel=5e-2)
    answer = graphs.chat("What is 1 plus 2?", max_new_tokens=8)  # the saved adapter loads and generates
    assert isinstance(answer, str)


def packed_batch() -> dict:
    gen = torch.Generator().manual_seed(0)
    pos = position_ids_from_lengths([[30, 34], [64]])                     # (2, 64): one shape every step
    ids = torch.randint(0, 49152, pos.shape, generator=gen)
    labels = ids.masked_fill(pos == 0, -100)
    return {k: v.cuda() for k, v in {"input_ids": ids, "position_ids": pos, "labels": labels,
                                     "attention_mask": torch.ones_like(ids)}.items()}


def test_replays_draw_new_dropout_masks_and_generation_after_is_unchanged():
    from torch._inductor.cudagraph_trees import (
        get_manager,  # only to check that graphs were captured, and dropped after
    )

    torch.manual_seed(0)
    model = get_method("lora").apply(load_model("tiny-llama"), LoraCfg(r=4, alpha=8, dropout=0.5)).cuda()
    for n, p in model.named_parameters():  # B starts at zero: make the adapter (and its dropout) matter
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    prompt = torch.randint(0, 49152, (1, 6), generator=torch.Generator().manual_seed(1)).cuda()
    model.eval()
    before = model.generate(input_ids=prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    batch, losses = packed_batch(), []
    with speed_context(model, TrainCfg(speed={"cuda_graphs": True}), torch.device("cuda"), packed=True,
                       say=False) as plan:
        assert "cuda_graphs" in plan
        model.train()
        for _ in range(5):  # warm-up, capture, then replays; no optimizer step, so the weights stay put
            loss, count = sft_loss(model, batch, 0.0, SpeedCfg(cuda_graphs=True))
            (loss / count).backward()
            losses.append(float(loss))
            model.zero_grad(set_to_none=True)
        assert get_manager(torch.cuda.current_device(), create_if_none_exists=False) is not None
    assert len(set(losses)) == len(losses), losses  # a replay that reused its masks would repeat a loss
    assert get_manager(torch.cuda.current_device(), create_if_none_exists=False) is None  # graphs dropped
    assert not any(isinstance(m, CheckpointedLayer) for m in model.modules())
    model.eval()
    after = model.generate(input_ids=prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(after, before)
