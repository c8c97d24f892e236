#!/bin/bash
# One device call of the train-e2e benchmark (docs/speed.md): bash benchmarks/scripts/gpu_train_e2e.sh PHASE TAG
# Run from a folder holding src/, benchmarks/, tests/, pyproject.toml (the test markers) and assets/ (tok/: the SmolLM2 tokenizer saved with
# save_pretrained; data/: huanhuan.json, alpaca_en_demo.json; peer_lora.py from ../shared/bench), with the
# wheels the image lacks in ../.whl (pydantic, pydantic-core, annotated-types, typing-inspection, trl, datasets,
# dill, multiprocess, liger-kernel, bitsandbytes). Rows go to $OUT/e2e.jsonl, logs to $OUT.
PHASE=$1; TAG=$2
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site ../.whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft, trl; print(torch.__version__, transformers.__version__, peft.__version__, trl.__version__)"
E2E="python3 benchmarks/scripts/train_e2e.py --tok assets/tok --machine $TAG --out $OUT/e2e.jsonl --peer-script assets/peer_lora.py"
HH=assets/data/huanhuan.json; AL=assets/data/alpaca_en_demo.json
case $PHASE in
  a)  # 1.5B, huanhuan, whole 200-step runs: tunelab default and lean against TRL with and without checkpointing
    timeout 480 $E2E --shape qwen2.5-1.5b --data $HH --steps 200 --runs tunelab,trl,trl-gc,tunelab-lean --timeout 200
    TUNELAB_TEST_TOKENIZER=$PWD/assets/tok timeout 75 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_speed_gpu.py -x 2>&1 | tail -15 | tee $OUT/gpu_tests.txt
    ;;
  g)  # CUDA graphs in tunelab train: the GPU tests (the correctness gate), then graphs and default once each
    TUNELAB_TEST_TOKENIZER=$PWD/assets/tok timeout 200 python3 -m pytest -q -p no:cacheprovider \
      tests/kernels/test_cuda_graphs_gpu.py tests/kernels/test_speed_gpu.py 2>&1 | tail -25 | tee $OUT/gpu_tests.txt
    timeout 320 $E2E --shape qwen2.5-1.5b --data $HH --steps 200 --runs tunelab-graphs,tunelab --timeout 150
    ;;
  G)  # CUDA graphs against the default, each cold and again warm (inductor cache), in one call
    timeout 560 $E2E --shape qwen2.5-1.5b --data $HH --steps 200 \
      --runs tunelab,tunelab-graphs,tunelab-warm,tunelab-graphs-warm --timeout 135
    ;;
  w)  # 1.5B whole 200-step runs: tunelab on a fresh machine (cold compile), again (inductor cache warm), TRL
    timeout 540 $E2E --shape qwen2.5-1.5b --data $HH --steps 200 --runs tunelab,tunelab-warm,trl --timeout 200
    ;;
  7)  # 7B: LoRA steady rate against TRL; QLoRA's peak (load included) in lean mode
    timeout 370 $E2E --shape qwen2.5-7b --data $HH --steps 20 --runs tunelab,trl --timeout 170
    timeout 170 $E2E --shape qwen2.5-7b --data $HH --steps 20 --bs 2 --method qlora --runs tunelab-lean --timeout 160
    ;;
  c)  # memory-lean mode against TRL with gradient checkpointing
    timeout 330 $E2E --shape qwen2.5-1.5b --data $HH --steps 200 --runs tunelab-lean,trl-gc --timeout 180
    ;;
  q)  # QLoRA through tunelab train: quantized while loading (load included in the peak)
    timeout 150 $E2E --shape qwen2.5-1.5b --data $HH --steps 20 --method qlora --runs tunelab --timeout 140
    ;;
  p)  # where a cold start goes: each run with its own empty compiler caches (a fresh machine), compile-time
      # tables in the logs; -warm reuses the default run's caches; -noflex/-noce/-nopool each take one part away
    python3 -c "import torch.nn.attention.varlen as v; print('varlen_attn available')" || true
    timeout 560 $E2E --shape qwen2.5-1.5b --data $HH --steps 60 --fresh-cache --compile-times \
      --runs tunelab,tunelab-warm,tunelab-nopool,tunelab-noflex,tunelab-noce --timeout 110
    ;;
  k)  # the GPU tests (correctness gate, CUDA graphs included), then the 1.5B whole run on a fresh machine's
      # empty compiler caches (compile-time table in its log), TRL, and tunelab again with those caches warm
    TUNELAB_TEST_TOKENIZER=$PWD/assets/tok timeout 170 python3 -m pytest -q -p no:cacheprovider \
      tests/kernels/test_cuda_graphs_gpu.py tests/kernels/test_speed_gpu.py 2>&1 | tail -25 | tee $OUT/gpu_tests.txt
    timeout 400 $E2E --shape qwen2.5-1.5b --data $HH --steps 200 --fresh-cache --compile-times \
      --runs tunelab,trl,tunelab-warm --timeout 170
    ;;
  m)  # after k, in one call: bench fast vs HF+PEFT, TRL with Liger, the 7B steady rate
    timeout 110 python3 -m tunelab bench --shape qwen2.5-1.5b --batch 4 --seq 2048 --method lora --peer \
      --peer-script assets/peer_lora.py 2>&1 | grep '^{' | tee $OUT/bench.jsonl
    timeout 150 $E2E --shape qwen2.5-1.5b --data $HH --steps 200 --runs trl-liger --timeout 145
    timeout 200 $E2E --shape qwen2.5-7b --data $HH --steps 20 --runs tunelab,trl --timeout 95
    ;;
  l)  # alpaca_en_demo: tunelab and TRL, 100 steps each (TRL takes ~75 s, so not in m: its time limit)
    timeout 250 $E2E --shape qwen2.5-1.5b --data $AL --steps 100 --runs tunelab,trl --timeout 120
    ;;
  b)  # the other peers and shapes
    timeout 100 python3 -m tunelab bench --shape qwen2.5-1.5b --batch 4 --seq 2048 --method lora --peer \
      --peer-script assets/peer_lora.py 2>&1 | grep '^{' | tee $OUT/bench.jsonl
    timeout 150 $E2E --shape qwen2.5-1.5b --data $HH --steps 200 --runs trl-liger --timeout 145
    timeout 200 $E2E --shape qwen2.5-7b --data $HH --steps 30 --bs 2 --method qlora --runs tunelab --timeout 190
    ;;
  P)  # where the bench step's time goes (torch.profiler tables, 1.5B and 7B), and a cold 1.5B run's timeline
      # (the "loading" mark splits imports from loading the weights)
    python3 -c "import time; t=time.time(); import torch; a=time.time(); torch.zeros(1, device='cuda'); b=time.time()
import transformers, peft; from transformers import AutoModelForCausalLM; import tunelab.stages.sft; c=time.time()
print(f'import torch {a-t:.1f}s, cuda init {b-a:.1f}s, transformers+peft+tunelab {c-b:.1f}s')"
    timeout 120 python3 -m tunelab bench --shape qwen2.5-1.5b --batch 4 --seq 2048 --method lora --peer \
      --peer-script assets/peer_lora.py --profile-dir $OUT/prof 2>&1 | grep '^{' | tee $OUT/bench.jsonl
    timeout 100 python3 -m tunelab bench --shape qwen2.5-7b --batch 4 --seq 2048 --method lora \
      --profile-dir $OUT/prof 2>&1 | grep '^{' | tee -a $OUT/bench.jsonl
    timeout 150 $E2E --shape qwen2.5-1.5b --data $HH --steps 60 --fresh-cache --compile-times --runs tunelab --timeout 140
    ;;
  Q)  # the correctness gate (GPU tests), bench fast vs HF+PEFT at 1.5B and the 7B bench step, and where a cold
      # run's first seconds go: a short run with every import timestamped in its log (PYTHONPROFILEIMPORTTIME)
    TUNELAB_TEST_TOKENIZER=$PWD/assets/tok timeout 170 python3 -m pytest -q -p no:cacheprovider \
      tests/kernels/test_cuda_graphs_gpu.py tests/kernels/test_speed_gpu.py 2>&1 | tail -25 | tee $OUT/gpu_tests.txt
    timeout 120 python3 -m tunelab bench --shape qwen2.5-1.5b --batch 4 --seq 2048 --method lora --peer \
      --peer-script assets/peer_lora.py --profile-dir $OUT/prof 2>&1 | grep '^{' | tee $OUT/bench.jsonl
    timeout 100 python3 -m tunelab bench --shape qwen2.5-7b --batch 4 --seq 2048 --method lora \
      --profile-dir $OUT/prof 2>&1 | grep '^{' | tee -a $OUT/bench.jsonl
    PYTHONPROFILEIMPORTTIME=1 timeout 100 $E2E --shape qwen2.5-1.5b --data $HH --steps 10 --fresh-cache \
      --runs tunelab-imports --timeout 90
    ;;
  R)  # right after Q on the same machine: the 1.5B whole 200-step run on empty compiler caches against TRL, and
      # the 7B steady rate against TRL over 40 steps
    timeout 330 $E2E --shape qwen2.5-1.5b --data $HH --steps 200 --fresh-cache --compile-times \
      --runs tunelab,trl --timeout 190
    timeout 260 $E2E --shape qwen2.5-7b --data $HH --steps 40 --runs tunelab,trl --timeout 125
    ;;
  S)  # the 1.5B whole 200-step run on empty compiler caches, then TRL on the same data (R without its 7B rows)
    timeout 300 $E2E --shape qwen2.5-1.5b --data $HH --steps 200 --fresh-cache --compile-times \
      --runs tunelab,trl --timeout 180
    ;;
  T)  # the correctness gate (GPU tests, and the kernel tests with CUDA cases), the 1.5B whole 200-step run on
      # empty compiler caches beside TRL, bench fast vs HF+PEFT at 1.5B; U follows, on the same machine if it is still held
    TUNELAB_TEST_TOKENIZER=$PWD/assets/tok timeout 200 python3 -m pytest -q -p no:cacheprovider \
      tests/kernels/test_cuda_graphs_gpu.py tests/kernels/test_speed_gpu.py tests/kernels/test_kernel_lora.py \
      tests/kernels/test_kernel_linear_ce.py 2>&1 | tail -25 | tee $OUT/gpu_tests.txt
    timeout 340 $E2E --shape qwen2.5-1.5b --data $HH --steps 200 --fresh-cache --compile-times \
      --runs tunelab,trl --timeout 180
    timeout 100 python3 -m tunelab bench --shape qwen2.5-1.5b --batch 4 --seq 2048 --method lora --peer \
      --peer-script assets/peer_lora.py 2>&1 | grep '^{' | tee $OUT/bench.jsonl
    ;;
  U)  # after T: the 7B LoRA steady rate against TRL over 40 steps, then the 1.5B run with CUDA graphs, cold and
      # warm, and (when T ran on this machine, so its compiler caches are here) T's default run again warm
    timeout 270 $E2E --shape qwen2.5-7b --data $HH --steps 40 --runs tunelab,trl --timeout 130
    WARM=; [ -d /tmp/e2e/cache-tunelab ] && WARM=tunelab-warm, || echo "T ran elsewhere: no tunelab-warm row"
    timeout 280 $E2E --shape qwen2.5-1.5b --data $HH --steps 200 --fresh-cache --compile-times \
      --runs ${WARM}tunelab-graphs,tunelab-graphs-warm --timeout 100
    ;;
  V)  # one call when little device time is left: the GPU tests, the 1.5B whole 200-step run on empty compiler
      # caches beside TRL, then the 7B steady rate beside TRL over 20 steps (rows are written as each run ends)
    TUNELAB_TEST_TOKENIZER=$PWD/assets/tok timeout 150 python3 -m pytest -q -p no:cacheprovider \
      tests/kernels/test_cuda_graphs_gpu.py tests/kernels/test_speed_gpu.py tests/kernels/test_kernel_lora.py \
      2>&1 | tail -25 | tee $OUT/gpu_tests.txt
    timeout 270 $E2E --shape qwen2.5-1.5b --data $HH --steps 200 --fresh-cache --compile-times \
      --runs tunelab,trl --timeout 170
    timeout 200 $E2E --shape qwen2.5-7b --data $HH --steps 20 --runs tunelab,trl --timeout 95
    ;;
esac
(cd /tmp/e2e && tar czf $OUT/logs.tgz *.log); ls /tmp/e2e
