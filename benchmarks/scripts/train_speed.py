"""train.speed on vs off: the SFT loss step (tunelab.kernels.train glue, as sft_loss runs it) on a real shape."""
import json, sys, time
import torch
sys.path.insert(0, "src")
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from tunelab.bench.shapes import build_config
from tunelab.config import TrainCfg
from tunelab.engine.loss import causal_lm_loss_sum, count_targets
from tunelab.kernels.train import chunked_causal_lm_loss, speed_context

shape, B, T, steps, warm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), 8, 3
dev = torch.device("cuda")
CONFIGS = {"off": {"chunked_ce": False}, "chunked_ce": {},
           "chunked+fused_lora": {"fused_lora": True},
           "chunked+fused_lora+compile": {"fused_lora": True, "compile_layers": True}}
for name, speed in CONFIGS.items():
    torch.manual_seed(0)
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(build_config(shape), dtype=torch.bfloat16, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))
    model.train()
    cfg = TrainCfg(speed=speed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (B, T), generator=gen).to(dev)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    n = count_targets(ids)
    def step():
        loss = chunked_causal_lm_loss(model, batch, ids, 0.0, cfg.speed) if cfg.speed.chunked_ce else None
        if loss is None:
            loss = causal_lm_loss_sum(model(**batch, use_cache=False).logits, ids)
        (loss / n).backward(); opt.step(); opt.zero_grad(set_to_none=True)
        return float(loss.detach()) / n
    torch.cuda.reset_peak_memory_stats()
    with speed_context(model, cfg, dev):
        first = [step() for _ in range(warm)]
        torch.cuda.synchronize(); t = time.perf_counter()
        for _ in range(steps): step()
        torch.cuda.synchronize(); dt = time.perf_counter() - t
    row = {"bench": "train.speed", "shape": shape, "method": "lora", "batch": B, "seq": T, "config": name,
           "speed": cfg.speed.model_dump(), "tok_s": round(B * T * steps / dt),
           "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2), "loss_step1": round(first[0], 5),
           "gpu": torch.cuda.get_device_name()}
    print(json.dumps(row), flush=True)
    del model, opt; torch.cuda.empty_cache()
