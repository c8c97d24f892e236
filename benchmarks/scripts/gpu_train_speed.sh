#!/bin/bash
# One GPU call (wheels for pydantic etc. in .device/wheels, carried): train.speed on vs off through the SFT loss glue (rows to $OUT/train_speed.jsonl)
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
PY=python3; [ -x /opt/torch/.venv/bin/python3 ] && PY=/opt/torch/.venv/bin/python3
$PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/wheels/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
timeout 220 $PY benchmarks/scripts/train_speed.py qwen2.5-1.5b 4 2048 2>&1 | grep -v "Warning\|warn" | tee $OUT/train_speed.txt
grep '^{' $OUT/train_speed.txt > $OUT/train_speed.jsonl
