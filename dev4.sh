#!/bin/bash
# session 12: GPU tests after the auto-rule change, then the headline layer-step table
R=benchmarks/results
n_m=$(wc -l < $R/multi_lora.csv)
timeout 220 python3 -m pytest -m gpu tests/kernels -k "default_path or full_size_bf16 or launch or fast or gemm_small or gluon_shrink" -q 2>&1 | tail -15 > $OUT/tests.log
timeout 320 python3 benchmarks/bench_multi_lora.py --tokens 2048,4096,8192,16384 --adapters 8,32,64 --variants base,fused --graph-variants base,fused --slow-variants-tokens 0 --rep 50 > $OUT/step.log 2>&1
tail -n +$((n_m+1)) $R/multi_lora.csv > $OUT/new_multi.csv
