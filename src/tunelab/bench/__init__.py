"""tunelab.bench: training-step throughput/memory on random-weight models of real shapes, beside HF+PEFT.

- `shapes`: model configs (qwen2.5-0.5b/1.5b/7b, llama3-8b, tiny).
- `step`: `BenchCfg` (each speed means on/off) and `measure(cfg) -> row`.
- `flops`: FLOPs/MFU convention shared with the peer script.
- `runner`: named sweep, one process per configuration, and the peer runner.
- `results`: rows appended to benchmarks/results/<date>-<device>.jsonl.

The command line is `tunelab bench` (tunelab.cli.bench); see docs/speed.md.
"""
