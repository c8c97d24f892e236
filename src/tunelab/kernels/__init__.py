"""tunelab.kernels: fast paths for training, each with a plain fallback and a reference test.

- `linear_ce`: chunked linear + cross-entropy (no full logits); optional Liger-Kernel backend.
- `lora`: fused LoRA linear; `fuse_lora` / `unfuse_lora` swap PEFT's modules in and out.
- `varlen`: document-masked attention for packed batches (flex_attention on CUDA, SDPA + mask elsewhere).
- `regions`: per-decoder-layer `torch.compile` and activation checkpointing.

Submodules are imported on use, so `import tunelab.kernels` stays cheap.
"""
