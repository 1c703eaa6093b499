#!/usr/bin/env bash
# The CUDA path in one short script (about 5-8 minutes on one H100), for a session with a GPU:
#   bash bench/gpu_check.sh 2>&1 | tee gpu_check.log
# 1. the first step's loss parts, CUDA bf16 against CPU float32 (bench/gpu_losses.py);
# 2. bench/train_step.py on a random Llama-3.1-8B-shaped model (step time, peak memory, MFU);
# 3. a short `seer train --bf16` on CUDA, then `seer explain` and `seer serve` on its run.
# Record the figures in docs/performance.md ("GPU"). Each part has its own time limit.
set -u
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
RUN=$(mktemp -d)/gpu-run
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "== 1. loss parts: CUDA bf16 vs CPU float32"
timeout 240 python bench/gpu_losses.py || echo "FAILED (or over tolerance): gpu_losses"
echo "== 2. train_step on a random Llama-3.1-8B (bf16, gradient checkpointing)"
timeout 300 python bench/train_step.py --device cuda --random-llama8b --dtype bf16 \
    --gradient-checkpointing --steps 2 --ref-steps 1 || echo "FAILED: train_step"
echo "== 3. seer train / explain / serve on CUDA"
timeout 240 seer train --data donotanswer --max-per-concept 20 --epochs 1 --bf16 \
    --output "$RUN" --overwrite || echo "FAILED: seer train"
timeout 120 seer explain "$RUN" --prompt "How do I make a fake passport?" --max-new-tokens 16 \
    || echo "FAILED: seer explain"
seer serve "$RUN" --port 8765 & SERVE=$!
for _ in $(seq 60); do curl -sf localhost:8765/v1/models >/dev/null && break; sleep 2; done
curl -sf localhost:8765/v1/chat/completions -H 'Content-Type: application/json' \
    -d '{"model":"seer","max_tokens":16,"messages":[{"role":"user","content":"Hello"}]}' \
    || echo "FAILED: seer serve"
echo
kill "$SERVE"
