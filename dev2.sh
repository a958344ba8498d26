#!/bin/bash
# session 12, call: gm_rank_k GPU tests and layer step
R=benchmarks/results
n_m=$(wc -l < $R/multi_lora.csv)
timeout 200 python3 -m pytest -m gpu tests/kernels -k "gemm_small_shapes or gemm_full or default_path or fp16" -q -x 2>&1 | tail -15 > $OUT/tests.log
timeout 280 python3 benchmarks/bench_multi_lora.py --shapes 4096x4096,4096x1024 --tokens 4096,8192 --adapters 8,32,64 --variants base,fused,fused_gluon,fused_gluon_full_k --graph-variants base,fused,fused_gluon,fused_gluon_full_k --slow-variants-tokens 0 --rep 60 > $OUT/step.log 2>&1
tail -n +$((n_m+1)) $R/multi_lora.csv > $OUT/new_multi.csv
