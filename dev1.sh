#!/bin/bash
# session 12, call 1: Gluon wgrad tests, sweep round 9, layer step
cd "$(dirname "$0")" 2>/dev/null || true
R=benchmarks/results
n_t=$(wc -l < $R/lora_tiles.csv); n_m=$(wc -l < $R/multi_lora.csv)
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu --format=csv > $OUT/smi.txt
timeout 230 python3 -m pytest -m gpu tests/kernels -k "gluon_wgrad or narrow" -q -x 2>&1 | tail -25 > $OUT/tests.log
timeout 100 python3 benchmarks/sweep_lora_tiles.py --round 9 --kernels wg --cases 4096x1024x4096,4096x1024x8192,4096x4096x8192 --budget-s 90 > $OUT/sweep.log 2>&1
timeout 230 python3 benchmarks/bench_multi_lora.py --tokens 4096,8192 --adapters 8,32,64 --variants base,fused,fused_wg_gluon --graph-variants base,fused,fused_wg_gluon --slow-variants-tokens 0 --rep 60 > $OUT/step.log 2>&1
tail -n +$((n_t+1)) $R/lora_tiles.csv > $OUT/new_tiles.csv
tail -n +$((n_m+1)) $R/multi_lora.csv > $OUT/new_multi.csv
