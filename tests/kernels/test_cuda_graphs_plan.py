"""train.speed.cuda_graphs on a CPU: the switch, the plan's reason for every blocker, the wiring of speed_context
(reduce-overhead compile, one graph iteration per decoder forward, graphs dropped after training), and a CPU
run asking for graphs that falls back with its reason and trains exactly like one that does not.

The capture itself needs CUDA: tests/kernels/test_cuda_graphs_gpu.py.
"""

import pytest
import torch

import tunelab
from tunelab.config import LoraCfg, TrainCfg
from tunelab.config.speed import SpeedCfg
from tunelab.kernels import regions
from tunelab.kernels import train as speed_mod
from tunelab.kernels.regions import CheckpointedLayer
from tunelab.kernels.train import mark_steps, plan_speed, speed_context
from tunelab.methods import get_method
from tunelab.models import load_model

CUDA = torch.device("cuda")  # plan_speed only reads the device type: planning for CUDA needs no GPU


def lora_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return get_method("lora").apply(load_model("tiny-llama"), LoraCfg(r=4, alpha=8, dropout=0.0))


def graphs(**train) -> TrainCfg:
    speed = {"cuda_graphs": True, **train.pop("speed", {})}
    return TrainCfg(speed=speed, **train)


def test_switch_accepts_auto_true_false_and_auto_is_off_everywhere():
    assert SpeedCfg().cuda_graphs == "auto"
    assert not SpeedCfg().wants("cuda_graphs", "cuda")          # auto: off, even on CUDA
    assert SpeedCfg(cuda_graphs=True).wants("cuda_graphs", "cuda")
    assert not SpeedCfg(cuda_graphs=False).wants("cuda_graphs", "cuda")
    assert not SpeedCfg(mode="plain", cuda_graphs=True).wants("cuda_graphs", "cuda")
    assert SpeedCfg().wants("compile_layers", "cuda")           # the other switches' auto is unchanged
    with pytest.raises(ValueError, match="cuda_graphs"):
        TrainCfg(speed={"cuda_graphs": "sometimes"})


def test_cli_override_sets_the_switch_and_a_bad_value_names_the_key(tmp_path):
    from tunelab.config.loader import load_config

    path = tmp_path / "sft.yaml"
    path.write_text("model: {name: tiny-llama}\ndata: {train: train.json}\n")
    assert load_config(path, ["train.speed.cuda_graphs=true"]).train.speed.cuda_graphs is True
    assert load_config(path).train.speed.cuda_graphs == "auto"
    with pytest.raises(ValueError, match="train.speed.cuda_graphs"):
        load_config(path, ["train.speed.cuda_graphs=maybe"])


def test_plan_turns_graphs_on_only_when_asked_on_cuda_with_packed_compiled_layers():
    model = lora_model()
    on = plan_speed(model, graphs(), CUDA, packed=True, optimizer="adamw")
    assert "cuda_graphs" in on and "compile_layers" in on and "flex_attention" in on
    assert "cuda_graphs" not in on.off
    auto = plan_speed(model, TrainCfg(), CUDA, packed=True)
    assert "cuda_graphs" not in auto
    assert auto.off["cuda_graphs"] == "auto: off, cold-start cost; set true to capture"
    assert "cuda_graphs (auto: off, cold-start cost; set true to capture)" in auto.line()


@pytest.mark.parametrize("train, packed, device, reason", [
    ({"speed": {"cuda_graphs": False}}, True, "cuda", "train.speed.cuda_graphs=false"),
    ({"speed": {"mode": "plain"}}, True, "cuda", "train.speed.mode=plain"),
    ({}, True, "cpu", "needs CUDA (device cpu)"),
    ({}, False, "cuda", "needs packed rows of one shape (rows are not packed (data.packing))"),
    ({"speed": {"flex_attention": False}}, True, "cuda",
     "needs packed rows of one shape (train.speed.flex_attention=false)"),
    ({"speed": {"mode": "lean"}}, True, "cuda", "lean mode: a memory mode, and graphs hold a memory pool of their own"),
    ({"gradient_checkpointing": True}, True, "cuda",
     "train.gradient_checkpointing: a memory mode, and graphs hold a memory pool of their own"),
    ({"speed": {"compile_layers": False}}, True, "cuda", "needs compile_layers (train.speed.compile_layers=false)"),
    ({"grad_accum": 2}, True, "cuda", "train.grad_accum > 1: accumulated .grad would live in graph memory"),
])
def test_each_blocker_names_its_reason(train, packed, device, reason):
    plan = plan_speed(lora_model(), graphs(**train), torch.device(device), packed=packed)
    assert "cuda_graphs" not in plan
    assert plan.off["cuda_graphs"] == reason
    assert f"cuda_graphs ({reason})" in plan.line()


def test_four_bit_base_and_torchrun_block_graphs(monkeypatch):
    model = lora_model()
    model.tunelab_quantized = {"quant_type": "nf4"}  # what methods.qlora marks on a 4-bit base
    plan = plan_speed(model, graphs(), CUDA, packed=True)
    assert plan.off["cuda_graphs"] == "needs compile_layers (4-bit base: bitsandbytes layers run eager)"
    monkeypatch.setenv("WORLD_SIZE", "2")
    plan = plan_speed(lora_model(), graphs(), CUDA, packed=True)
    assert plan.off["cuda_graphs"] == "DDP/FSDP (torchrun): one process only"


def test_mark_steps_starts_one_graph_iteration_per_decoder_forward(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: calls.append(1))
    model = lora_model()
    ids = torch.randint(0, 1000, (2, 8))
    hook = mark_steps(model)
    model(input_ids=ids, use_cache=False).logits.sum().backward()   # a training step
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)                        # an evaluation batch
    assert len(calls) == 2
    hook.remove()
    model(input_ids=ids, use_cache=False)
    assert len(calls) == 2


def test_speed_context_compiles_for_graphs_and_drops_them_after(monkeypatch):
    """With the plan on (planned for CUDA), the layers compile in reduce-overhead mode, the step hook lives
    for the block only, and on exit the graphs are reset and the model's own, uncompiled layers are back."""
    compiled, resets, marks = [], [], []
    monkeypatch.setattr(regions, "compile_layers", lambda model, **kw: compiled.append(kw))
    monkeypatch.setattr(torch.compiler, "reset", lambda: resets.append(1))
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    model = lora_model()
    layers = list(speed_mod._layers(model))
    ids = torch.randint(0, 1000, (1, 8))
    with speed_context(model, graphs(speed={"fused_lora": False, "flex_attention": True}), CUDA, packed=True,
                       say=False) as plan:
        assert "cuda_graphs" in plan
        assert compiled == [{"mode": "reduce-overhead"}]
        assert all(isinstance(m, CheckpointedLayer) and not m.active for m in speed_mod._layers(model))
        model.base_model.model.model(input_ids=ids, use_cache=False)
        assert marks == [1]
    assert resets == [1]
    assert list(speed_mod._layers(model)) == layers          # the same, never compiled layer objects
    model(input_ids=ids, use_cache=False)
    assert marks == [1]                                       # no graph iteration after training


def test_default_speed_context_wraps_without_checkpointing_and_neither_marks_steps_nor_resets(monkeypatch):
    compiled, resets = [], []
    monkeypatch.setattr(regions, "compile_layers", lambda model, **kw: compiled.append(kw))
    monkeypatch.setattr(torch.compiler, "reset", lambda: resets.append(1))
    model = lora_model()
    with speed_context(model, TrainCfg(speed={"fused_lora": False}), CUDA, packed=True, say=False) as plan:
        assert "compile_layers" in plan and "cuda_graphs" not in plan
        wrapped = list(speed_mod._layers(model))  # fast mode checkpoints no layer: one compiled variant serves all
        assert len(wrapped) == 2 and all(isinstance(m, CheckpointedLayer) and not m.active for m in wrapped)
    assert compiled == [{}] and resets == []
    assert not any(isinstance(m, CheckpointedLayer) for m in model.modules())


def run_cfg(data_file, out, cuda_graphs):
    return {"model": {"name": "tiny-llama"},
            "data": {"train": str(data_file), "max_length": 64, "val_size": 0.25, "packing": True},
            "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.1},
            "train": {"batch_size": 4, "lr": 1e-2, "seed": 0, "report": False, "max_steps": 3, "eval_every": 2,
                      "device": "cpu", "speed": {"cuda_graphs": cuda_graphs}},
            "output_dir": str(out)}


def test_cpu_run_asking_for_graphs_falls_back_with_its_reason_and_trains_identically(tmp_path, addition_file,
                                                                                   capfd):
    asked = tunelab.train(run_cfg(addition_file, tmp_path / "graphs", True), progress=True)
    line = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("speed:")]
    assert line and "cuda_graphs (needs CUDA (device cpu))" in line[0]
    plain = tunelab.train(run_cfg(addition_file, tmp_path / "plain", False), progress=False)
    a = [(m["step"], m.get("loss"), m.get("eval_loss")) for m in asked.metrics()]
    b = [(m["step"], m.get("loss"), m.get("eval_loss")) for m in plain.metrics()]
    assert a == b and any(v is not None for _, _, v in a)   # same losses, evaluation included, bit for bit


def test_every_training_and_evaluation_batch_of_the_flex_path_has_one_shape(tmp_path, addition_file, monkeypatch):
    """What a captured graph needs from the data: packed rows padded to batch_size x data.max_length, for
    training steps (an epoch's short last batch included) and evaluation batches alike (flex path on a CPU)."""
    from tunelab.stages import sft

    seen = []

    def recording(model, batch, *args, **kw):
        seen.append((tuple(batch["input_ids"].shape), torch.is_grad_enabled()))
        return loss_fn(model, batch, *args, **kw)

    loss_fn = sft.sft_loss
    monkeypatch.setattr(sft, "sft_loss", recording)
    cfg = run_cfg(addition_file, tmp_path / "run", False)
    cfg["train"].update(max_steps=4, batch_size=5, speed={"flex_attention": True})  # 5: short batches come up
    tunelab.train(cfg, progress=False)
    shapes = {shape for shape, _ in seen}
    assert shapes == {(5, 64)}, seen
    assert {grad for _, grad in seen} == {True, False}  # training and evaluation batches both seen
