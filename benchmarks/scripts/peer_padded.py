"""Peer on real data: Hugging Face transformers + PEFT LoRA with the usual dynamic-padding collator.

What a user of HF Trainer + PEFT gets on variable-length SFT data: batches of `--bs` samples in a
shuffled order, right-padded to the longest sample of the batch (as DataCollatorForSeq2Seq does),
an attention mask, labels -100 on padding, `model(...).loss`. Random-weight model of a real shape
(throughput does not depend on the weights); sample lengths come from a file written by
benchmarks/scripts/data_lengths.py. One pass over the data is timed; tok/s counts real tokens only.

    python benchmarks/scripts/peer_padded.py --lengths benchmarks/data/alpaca_en_demo.lengths.json --bs 8
"""
import argparse
import json
import time

SHAPES = {
    "qwen2.5-1.5b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                         "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                         "tie_word_embeddings": True, "rope_theta": 1e6, "max_position_embeddings": 32768},
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen2.5-1.5b", choices=sorted(SHAPES))
    ap.add_argument("--lengths", required=True)
    ap.add_argument("--bs", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config

    with open(a.lengths, encoding="utf-8") as f:
        data = json.load(f)
    lengths = [min(n, a.max_length) for n in (data["lengths"] if isinstance(data, dict) else data)]
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(a.seed)).tolist()
    torch.manual_seed(a.seed)
    cfg = Qwen2Config(**SHAPES[a.shape])
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
    model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
    gen = torch.Generator().manual_seed(a.seed + 1)
    batches = []
    for i in range(0, len(order), a.bs):
        lens = [lengths[j] for j in order[i:i + a.bs]]
        width = max(lens)
        ids = torch.randint(0, cfg.vocab_size, (len(lens), width), generator=gen)
        mask = (torch.arange(width)[None, :] < torch.tensor(lens)[:, None]).long()
        labels = ids.masked_fill(mask == 0, -100)
        batches.append((ids.cuda(), mask.cuda(), labels.cuda(), sum(lens), ids.numel()))

    def step(b):
        out = model(input_ids=b[0], attention_mask=b[1], labels=b[2], use_cache=False)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    torch.cuda.reset_peak_memory_stats()
    for b in batches[:a.warmup]:
        step(b)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for b in batches:
        step(b)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    real = sum(b[3] for b in batches)
    print(json.dumps({"peer": "hf+peft-padded", "shape": a.shape, "lengths": a.lengths, "bs": a.bs, "samples": len(lengths),
                          "steps": len(batches), "real_tokens": real, "fill": round(real / sum(b[4] for b in batches), 3),
                          "tok_s": round(real / dt), "seconds": round(dt, 2),
                          "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}), flush=True)


if __name__ == "__main__":
    main()
