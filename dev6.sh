#!/bin/bash
# session 12: the shipped defaults (gated stream-K shrink, rank-cut Gluon GEMM, gemm path on 4096²), every shape and T
R=benchmarks/results
n_m=$(wc -l < $R/multi_lora.csv)
timeout 100 python3 -m pytest -m gpu tests/kernels -k "gluon_shrink_small or default_path" -q -x 2>&1 | tail -3 > $OUT/tests.log
timeout 300 python3 benchmarks/bench_multi_lora.py --tokens 2048,4096,8192,16384 --adapters 8,32,64 --variants base,fused,fused_shgl_whole --graph-variants base,fused,fused_shgl_whole --slow-variants-tokens 0 --rep 50 > $OUT/step.log 2>&1
tail -n +$((n_m+1)) $R/multi_lora.csv > $OUT/new_multi.csv
