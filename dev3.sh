#!/bin/bash
# session 12: gemm path (Gluon GEMM with gm_rank_k) against the stream path on the square and MLP shapes
R=benchmarks/results
n_m=$(wc -l < $R/multi_lora.csv)
V=base,fused,fused_gluon
timeout 200 python3 benchmarks/bench_multi_lora.py --shapes 4096x4096 --tokens 2048,4096,8192,16384 --adapters 8,32,64 --variants $V --graph-variants $V --slow-variants-tokens 0 --rep 60 > $OUT/step_sq.log 2>&1
timeout 330 python3 benchmarks/bench_multi_lora.py --shapes 4096x14336,14336x4096 --tokens 4096,8192 --adapters 8,32,64 --variants $V --graph-variants $V --slow-variants-tokens 0 --rep 60 > $OUT/step_mlp.log 2>&1
tail -n +$((n_m+1)) $R/multi_lora.csv > $OUT/new_multi.csv
