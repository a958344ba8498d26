#!/bin/bash
# session 12: stream-K Gluon shrink: GPU tests, sweep round 10, layer step A/B
R=benchmarks/results
n_t=$(wc -l < $R/lora_tiles.csv); n_m=$(wc -l < $R/multi_lora.csv)
timeout 200 python3 -m pytest -m gpu tests/kernels -k "gluon_shrink or split_k_workspace or default_path or gemm_full" -q -x 2>&1 | tail -15 > $OUT/tests.log
timeout 90 python3 benchmarks/sweep_lora_tiles.py --round 10 --kernels sh --cases 4096x4096x2048,4096x4096x4096,4096x4096x8192,4096x4096x16384,4096x1024x4096,4096x1024x8192 --budget-s 80 > $OUT/sweep.log 2>&1
V=base,fused,fused_shgl_whole
timeout 150 python3 benchmarks/bench_multi_lora.py --shapes 4096x4096,4096x1024 --tokens 2048,4096,8192,16384 --adapters 8,32,64 --variants $V --graph-variants $V --slow-variants-tokens 0 --rep 50 > $OUT/step.log 2>&1
timeout 150 python3 benchmarks/bench_multi_lora.py --shapes 4096x14336,14336x4096 --tokens 4096,8192 --adapters 8,32,64 --variants $V --graph-variants $V --slow-variants-tokens 0 --rep 50 > $OUT/step_mlp.log 2>&1
tail -n +$((n_t+1)) $R/lora_tiles.csv > $OUT/new_tiles.csv
tail -n +$((n_m+1)) $R/multi_lora.csv > $OUT/new_multi.csv
