"""Peer for the train-e2e benchmark: a whole TRL SFTTrainer run, as a user would write it.

Alpaca records -> conversational prompt/completion (loss on the answer only, as tunelab's SFT), LoRA r16
alpha 32 dropout 0.05 on all linears, packing (TRL's default best-fit-decreasing, padding-free rows),
bf16, `--bs` rows of `--seq` tokens per step, `--steps` steps, no evaluation, no checkpoints.
Prints one JSON line: steady real tokens/s (TRL's own count of non-padding input tokens, between the end
of step 1 and the last step, GPU synchronized at both ends), first-step time, peak GiB (load included).
`--cpu`: TRL as a CPU user runs it: fp32, padded batches (no packing), peak = the process's peak RSS;
`--cpu --bf16`: the same with bf16 weights and `bf16=True`, as the GPU rows run.
"""
import argparse
import json
import resource
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--data", required=True)
ap.add_argument("--steps", type=int, default=200)
ap.add_argument("--bs", type=int, default=4)
ap.add_argument("--seq", type=int, default=2048)
ap.add_argument("--gc", action="store_true")
ap.add_argument("--liger", action="store_true")
ap.add_argument("--qlora", action="store_true")
ap.add_argument("--cpu", action="store_true")
ap.add_argument("--bf16", action="store_true", help="with --cpu: bf16 weights and autocast")
ap.add_argument("--out", required=True)
a = ap.parse_args()
t_cmd = time.perf_counter()

from datasets import load_dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import AutoTokenizer, TrainerCallback  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402


def to_prompt_completion(r):
    user = r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")
    return {"prompt": [{"role": "user", "content": user}],
            "completion": [{"role": "assistant", "content": r["output"]}]}


ds = load_dataset("json", data_files=a.data, split="train")
ds = ds.map(to_prompt_completion, remove_columns=ds.column_names)
tok = AutoTokenizer.from_pretrained(a.model)


class Clock(TrainerCallback):
    """Times from train start; synchronizes the GPU only at the end of step 1 and of the last step."""

    def __init__(self):
        self.marks = {}

    def on_train_begin(self, args, state, control, **kw):
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if state.global_step in (1, a.steps):
            if torch.cuda.is_available() and not a.cpu:
                torch.cuda.synchronize()
            self.marks[state.global_step] = (time.perf_counter(), state.num_input_tokens_seen)


clock = Clock()
bf16 = a.bf16 or not a.cpu
model_kwargs = {"dtype": torch.bfloat16 if bf16 else torch.float32, "attn_implementation": "sdpa"}
if a.qlora:
    from transformers import BitsAndBytesConfig

    model_kwargs["quantization_config"] = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16)
    model_kwargs["device_map"] = {"": 0}
cfg = SFTConfig(output_dir="/tmp/trl-out", per_device_train_batch_size=a.bs, max_length=a.seq, packing=not a.cpu,
                max_steps=a.steps, learning_rate=2e-4, bf16=bf16, use_cpu=a.cpu, gradient_checkpointing=a.gc,
                use_liger_kernel=a.liger, logging_steps=10, save_strategy="no", report_to="none",
                include_num_input_tokens_seen="non_padding", model_init_kwargs=model_kwargs,
                dataset_num_proc=1 if a.cpu else 4, lr_scheduler_type="cosine", warmup_steps=max(1, a.steps * 3 // 100))
trainer = SFTTrainer(model=a.model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[clock],
                     peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))
trainer.train()
trainer.save_model("/tmp/trl-out/final")
(t1, n1), (t2, n2) = clock.marks[1], clock.marks[a.steps]
row = {"steady_tok_s": round((n2 - n1) / (t2 - t1)), "first_step_s": round(t1 - clock.t0, 2),
       "peak_gib": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 if a.cpu
                          else torch.cuda.max_memory_allocated() / 2**30), 2), "tokens_seen": int(n2),
       "cmd_internal_s": round(time.perf_counter() - t_cmd, 1)}
with open(a.out, "w") as f:
    f.write(json.dumps(row) + "\n")
print(json.dumps(row), flush=True)
