"""One benchmark configuration: build a random-weight model, time training steps, report a row.

Each speed means can be switched on or off (`BenchCfg`), so a sweep shows what each buys.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from tunelab.bench.flops import flops_per_token, mfu
from tunelab.bench.shapes import SHAPES, build_config
from tunelab.kernels.linear_ce import (
    LINEAR_CE_BACKENDS,
    linear_cross_entropy,
    shift_labels,
)
from tunelab.kernels.lora import fuse_lora
from tunelab.kernels.regions import checkpoint_layers, compile_layers
from tunelab.kernels.varlen import packed_forward_kwargs, register_hf_attention

METHODS = ("lora", "qlora", "full")
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune-no-cudagraphs")


@dataclass
class BenchCfg:
    """What to measure. Defaults: every speed means on, checkpointing off."""

    shape: str = "qwen2.5-1.5b"
    batch: int = 4
    seq: int = 2048
    method: str = "lora"
    rank: int = 16
    chunked_ce: bool = True
    fused_lora: bool = True
    compile: bool = True
    fused_adamw: bool = True
    grad_ckpt: bool = False
    ckpt_every: int = 1
    packing: bool = False
    act_budget: float = 1.0
    steps: int = 10
    warmup: int = 3
    ce_chunk: int | None = None
    ce_backend: str = "torch"
    compile_mode: str | None = None
    lengths: str | None = None
    seed: int = 0
    profile_dir: str | None = None
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Raise one ValueError naming every bad field."""
        problems = []
        if self.method not in METHODS:
            problems.append(f"method: {self.method!r} is not one of {METHODS}")
        for key in ("batch", "seq", "rank", "steps", "ckpt_every"):
            if getattr(self, key) <= 0:
                problems.append(f"{key}: must be > 0 (got {getattr(self, key)})")
        if not 0.0 < self.act_budget <= 1.0:
            problems.append(f"act_budget: must be in (0, 1] (got {self.act_budget})")
        if self.ce_backend not in (*LINEAR_CE_BACKENDS, "auto"):
            problems.append(f"ce_backend: {self.ce_backend!r} is not one of {sorted(LINEAR_CE_BACKENDS)} or 'auto'")
        if self.shape not in SHAPES:
            problems.append(f"shape: {self.shape!r} is not one of {', '.join(SHAPES)}")
        if self.warmup < 0:
            problems.append(f"warmup: must be >= 0 (got {self.warmup})")
        if self.compile_mode not in COMPILE_MODES:
            problems.append(f"compile_mode: {self.compile_mode!r} is not one of {COMPILE_MODES}")
        if self.lengths is not None and not self.packing and self.compile:
            problems.append("lengths without packing gives a new shape every step; add --no-compile "
                            "(or --packing)")
        if self.fused_lora and self.method != "lora":
            self.fused_lora = False  # meaningless for full fine-tuning; not an error
        if problems:
            raise ValueError("bad benchmark settings:\n  " + "\n  ".join(problems))


def packed_lengths(batch: int, seq: int, gen: torch.Generator) -> list[list[int]]:
    """Random sample lengths (uniform in [seq/8, seq/2]) filling each row of `seq` tokens exactly."""
    rows = []
    for _ in range(batch):
        row, left = [], seq
        while left > 0:
            n = int(torch.randint(max(1, seq // 8), max(1, seq // 2) + 1, (1,), generator=gen))
            row.append(min(n, left))
            left -= row[-1]
        rows.append(row)
    return rows


def read_lengths(path: str) -> list[int]:
    """Sample lengths from a `benchmarks/scripts/data_lengths.py` file ({"lengths": [...]} or a JSON list)."""
    import json
    from pathlib import Path

    data = json.loads(Path(path).read_text(encoding="utf-8"))
    lengths = data["lengths"] if isinstance(data, dict) else data
    if not lengths or not all(isinstance(n, int) and n > 1 for n in lengths):
        raise ValueError(f"{path}: expected a list of sample lengths (integers > 1)")
    return lengths


def data_batches(cfg: BenchCfg) -> list[list[list[int]]]:
    """Batches of samples, each batch a list of rows, each row a list of sample lengths.

    Random lengths (packing) or no lengths: one batch. From a lengths file: with packing, the samples
    packed best-fit-decreasing into rows of `seq` tokens, `batch` rows per step; without, `batch` samples
    per step in a seeded shuffled order, one sample per row (padded to the longest: dynamic padding).
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.lengths is None:
        rows = packed_lengths(cfg.batch, cfg.seq, gen) if cfg.packing else [[cfg.seq]] * cfg.batch
        return [rows]
    from tunelab.data.packing import best_fit_decreasing

    lengths = [min(n, cfg.seq) for n in read_lengths(cfg.lengths)]
    if cfg.packing:
        rows = [[lengths[i] for i in row] for row in best_fit_decreasing(lengths, cfg.seq)]
        # every step the same (batch, seq) shape: a short last batch would be compiled again
        return [rows[i:i + cfg.batch] for i in range(0, len(rows) - cfg.batch + 1, cfg.batch)]
    order = torch.randperm(len(lengths), generator=gen).tolist()
    rows = [[lengths[i]] for i in order]
    return [rows[i:i + cfg.batch] for i in range(0, len(rows), cfg.batch)]


def _tensors(cfg: BenchCfg, rows: list[list[int]], vocab: int, device: torch.device, gen: torch.Generator) -> dict:
    """input_ids (B, T), labels (B, T) and forward kwargs for one batch of rows; `tokens`: real tokens."""
    width = cfg.seq if cfg.packing or cfg.lengths is None else max(sum(r) for r in rows)
    ids = torch.randint(0, vocab, (len(rows), width), generator=gen)
    labels = ids.clone()
    kwargs: dict = {}
    if cfg.packing:
        from tunelab.kernels.varlen import position_ids_from_lengths

        padded = [r + [width - sum(r)] if sum(r) < width else r for r in rows]   # the tail is a dummy sample
        pos = position_ids_from_lengths(padded)
        labels[pos == 0] = -100          # a sample's first token is never predicted from the previous sample
        for i, r in enumerate(rows):
            labels[i, sum(r):] = -100
        kwargs = packed_forward_kwargs(pos.to(device))
    elif cfg.lengths is not None:
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            mask[i, :r[0]] = 1
        labels[mask == 0] = -100
        kwargs = {"attention_mask": mask.to(device)}
    return {"ids": ids.to(device), "labels": labels.to(device), "kwargs": kwargs | {"use_cache": False},
            "tokens": sum(sum(r) for r in rows), "targets": int((shift_labels(labels) != -100).sum())}


def _model(cfg: BenchCfg, device: torch.device):
    """The random-weight bf16 model of `cfg.shape` on `device`, long-context aware; (model, hf_config)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(cfg.seed)
    hf_cfg = build_config(cfg.shape)
    hf_cfg.max_position_embeddings = max(hf_cfg.max_position_embeddings, cfg.seq)   # long-context runs
    attn = register_hf_attention() if cfg.packing else "sdpa"
    with torch.device(device):  # initialise on the GPU: CPU init of a 7B model takes minutes
        model = AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.bfloat16, attn_implementation=attn)
    return model, hf_cfg


def build(cfg: BenchCfg, device: torch.device) -> tuple[torch.nn.Module, Callable[[dict], torch.Tensor], dict]:
    """Model (bf16, random init on `device`), a `step(batch)` closure returning the loss, and facts for the row."""
    model, hf_cfg = _model(cfg, device)
    n_params = sum(p.numel() for p in model.parameters())
    lm_head = model.get_output_embeddings()
    decoder = model.get_decoder()
    if cfg.method == "qlora":
        from tunelab.methods.qlora import quantize

        quantize(model)   # NF4 + double quantization, bf16 compute; the head stays bf16
        torch.cuda.empty_cache() if device.type == "cuda" else None
    if cfg.method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=cfg.rank, lora_alpha=2 * cfg.rank,
                                                 target_modules="all-linear", lora_dropout=0.0))
        if cfg.fused_lora:
            fuse_lora(model)
    if cfg.grad_ckpt:
        checkpoint_layers(model, every=cfg.ckpt_every)
    if cfg.compile:
        if cfg.act_budget < 1.0:
            # compile's partitioner then recomputes more so saved activations fit this fraction
            torch._functorch.config.activation_memory_budget = cfg.act_budget
        compile_layers(model, **({"mode": cfg.compile_mode} if cfg.compile_mode else {}))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=cfg.fused_adamw and device.type == "cuda")

    graphs = cfg.compile and cfg.compile_mode == "reduce-overhead"

    def step(batch: dict) -> torch.Tensor:
        if graphs:  # CUDA graphs: tell the graph trees a new iteration starts (earlier outputs may be reused)
            torch.compiler.cudagraph_mark_step_begin()
        ids, labels, kwargs = batch["ids"], batch["labels"], batch["kwargs"]
        if cfg.chunked_ce:
            hidden = decoder(input_ids=ids, **kwargs).last_hidden_state          # (B, T, H)
            loss = linear_cross_entropy(hidden, lm_head.weight, shift_labels(labels),
                                        chunk_size=cfg.ce_chunk, backend=cfg.ce_backend) / batch["targets"]
        else:
            loss = model(input_ids=ids, labels=labels, **kwargs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    facts = {"n_params": n_params, "n_layers": hf_cfg.num_hidden_layers, "hidden": hf_cfg.hidden_size,
             "trainable": sum(p.numel() for p in params), "vocab": hf_cfg.vocab_size}
    return model, step, facts


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _profile(step: Callable[[], torch.Tensor], cfg: BenchCfg, device: torch.device) -> None:
    """Two more steps under torch.profiler; the top kernels by device time go to profile_dir."""
    from pathlib import Path

    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(2):
            step()
        _sync(device)
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=90)
    name = cfg.extra.get("name", "custom")
    Path(cfg.profile_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.profile_dir) / f"profile-{cfg.shape}-{name}.txt").write_text(table, encoding="utf-8")


def measure(cfg: BenchCfg, device: torch.device | str | None = None) -> dict:
    """Run warmup + timed steps of `cfg`; returns the result row (tok/s, peak GiB, MFU, losses).

    With a lengths file the timed steps are one pass over the whole data (`steps` is ignored) and
    tok/s counts real tokens only, so packed and padded runs over the same samples compare directly.
    """
    cfg.validate()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    _, step, facts = build(cfg, device)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    plan = data_batches(cfg)
    batches = [_tensors(cfg, rows, facts["vocab"], device, gen) for rows in plan]
    timed = batches if cfg.lengths else [batches[0]] * cfg.steps
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    losses = [step(batches[i % len(batches)]) for i in range(cfg.warmup)]
    _sync(device)
    t1 = time.perf_counter()
    losses += [step(b) for b in timed]
    _sync(device)
    dt = time.perf_counter() - t1
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    if cfg.profile_dir:
        _profile(lambda: step(batches[0]), cfg, device)
    tokens = sum(b["tokens"] for b in timed)
    tok_s = tokens / dt
    n_ckpt = -(-facts["n_layers"] // cfg.ckpt_every) if cfg.grad_ckpt else 0   # layers 0, every, 2*every...
    per_tok = flops_per_token(facts["n_params"], facts["n_layers"], facts["hidden"], cfg.seq,
                              cfg.method, n_ckpt / facts["n_layers"])
    row = {k: v for k, v in asdict(cfg).items() if k not in ("extra", "profile_dir")} | cfg.extra
    if cfg.lengths:
        row |= {"samples": sum(len(r) for rows in plan for r in rows), "timed_steps": len(timed),
                "real_tokens": tokens, "fill": round(tokens / sum(b["ids"].numel() for b in timed), 3)}
    if cfg.compile:
        from torch._dynamo.utils import counters

        row["compiled_graphs"] = counters["stats"]["unique_graphs"]
    return row | {"tool": "tunelab", "tok_s": round(tok_s), "peak_gib": round(peak, 2) if peak is not None else None,
                  "mfu": round(mfu(tok_s, per_tok), 3), "params_b": round(facts["n_params"] / 1e9, 3),
                  "trainable_m": round(facts["trainable"] / 1e6, 2), "warmup_s": round(t1 - t0, 1),
                  "step_ms": round(1000 * dt / len(timed), 1),
                  "loss_first": round(float(losses[0]), 4), "loss_last": round(float(losses[-1]), 4)}
