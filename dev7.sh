#!/bin/bash
# session 12: the executor's 8B step (16 x 1024 tokens) on the shipped kernels
R=benchmarks/results
declare -A n
for f in $R/executor_*.csv; do n[$f]=$(wc -l < $f); done
timeout 420 python3 benchmarks/bench_executor.py --part check,throughput --tp-points 16x1:0 --tp-baselines 0 --tp-memory 0 > $OUT/exec.log 2>&1
for f in $R/executor_*.csv; do tail -n +$((${n[$f]}+1)) $f > $OUT/new_$(basename $f); done
