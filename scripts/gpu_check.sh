#!/usr/bin/env bash
# The CUDA check: CUDA-marked tests, then the benchmarks at real sizes, in under 8 minutes; results as files.
#
#   scripts/gpu_check.sh OUT_DIR            # e.g. scripts/gpu_check.sh docs/bench/gpu
#   PYTHON=.venv/bin/python scripts/gpu_check.sh "$OUT"
#
# Stages (each bounded by `timeout` and by what is left of the 450 s budget; a failed stage is logged and
# the next runs; OUT_DIR/stages.txt lists exit status and seconds of each):
#   1. pytest -m cuda                          -> pytest_cuda.log, pytest_cuda.xml
#   2. kinema batch, 2 processes under torchrun on the GPU(s) (jobs on cuda:LOCAL_RANK, ranks over gloo)
#                                              -> batch.results.jsonl
#      and --parallel cfg (the two branches of guidance on two processes; NCCL where there is a GPU per rank)
#                                              -> batch_cfg.results.jsonl
#   3. with 2 GPUs (else logged as skipped): 2-process training under accelerate launch (NCCL) -> train_ddp.log;
#      --parallel ulysses:2 and ring:2 on a small random Wan folder vs one process -> context_parallel.log
#   4. a random Wan-1.3B-shaped folder (bf16 transformer, Wan 2.1 VAE) in a temporary folder
#   5. s/step per attention backend, 1.3B shape, 480x832, 81 frames, cond+uncond batch (wan_parity.py --bench)
#                                              -> backends.json
#   6. MFU: FLOPs of one denoiser forward / its time, vs a bf16 8192^3 matmul and the datasheet peak
#                                              -> flops.json
#   7. peak GPU memory, offload none/model x VAE tiling off/on, fresh process each -> memory.json
#   8. kinema vs diffusers on the same folder (21 frames 480x832, 3 steps, A B after a warm-up) -> wan.json
#   then OUT_DIR/results.md from all of them (scripts/bench_gpu.py report).
set -uo pipefail

OUT=${1:?usage: scripts/gpu_check.sh OUT_DIR}
PY=${PYTHON:-python}
BUDGET=${BUDGET:-450}  # seconds from the start to the last stage's end; kill grace and the report fit in 8 minutes
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # absolute, before moving to the repository root
cd "$(dirname "$0")/.."
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
WAN="$WORK/wan-1.3b"
: > "$OUT/stages.txt"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device visible to $PY (torch.cuda.is_available() is False)" >&2
    exit 2
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" -c "import torch; p = torch.cuda.get_device_properties(0); \
print(f'{p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}')" > "$OUT/gpu.txt"

stage() {  # stage NAME LIMIT_S COMMAND...: run with the smaller of LIMIT_S and the budget left
    local name=$1 limit=$2 left=$((BUDGET - SECONDS)) t0=$SECONDS rc
    shift 2
    if ((left < 15)); then
        echo "$name skipped (budget spent)" | tee -a "$OUT/stages.txt"
        return 0
    fi
    ((limit > left)) && limit=$left
    echo "== $name (at most ${limit} s)"
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    echo "$name exit $rc in $((SECONDS - t0)) s" | tee -a "$OUT/stages.txt"
    tail -n 15 "$OUT/$name.log"
}

SIZE=(--frames 81 --height 480 --width 832)
stage pytest_cuda 100 "$PY" -m pytest -m cuda -q -p no:cacheprovider --junitxml="$OUT/pytest_cuda.xml"
printf '{"command": "generate", "prompt": "a red circle moving right on a blue background", "seed": %d, "device": "cuda"}\n' \
    0 1 2 3 > "$WORK/jobs.jsonl"
mkdir -p "$WORK/batch"
stage batch 45 "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 -m kinema.cli batch "$WORK/jobs.jsonl" \
    -o "$WORK/batch/{index}.mp4" --results "$OUT/batch.results.jsonl"
mkdir -p "$WORK/batch_cfg"
stage batch_cfg 45 "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 -m kinema.cli batch "$WORK/jobs.jsonl" \
    -o "$WORK/batch_cfg/{index}.mp4" --parallel cfg --results "$OUT/batch_cfg.results.jsonl"
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.device_count() >= 2 else 1)"; then
    "$PY" -m kinema.cli init "$WORK/tiny" --preset tiny > /dev/null
    stage train_ddp 60 "$PY" -m accelerate.commands.launch --num_processes 2 -m kinema.cli train configs/tiny.yaml \
        --model "$WORK/tiny" --run "$WORK/tiny-run"
    "$PY" -c "from kinema.models import wan_testing as w; w.t2v_folder('$WORK/wan-cp')"
    echo "{\"command\": \"generate\", \"prompt\": \"a cat\", \"model\": \"$WORK/wan-cp\", \"frames\": 9, \"height\": 64, \"width\": 64, \"steps\": 2, \"device\": \"cuda\", \"dtype\": \"float32\"}" > "$WORK/cp.jsonl"
    CP=(-m torch.distributed.run --standalone --nproc-per-node 2 -m kinema.cli batch "$WORK/cp.jsonl")
    stage context_parallel 90 sh -c "\"$PY\" -m kinema.cli batch \"$WORK/cp.jsonl\" -o \"$WORK/cp-one\" --results \"$WORK/one.jsonl\" && \
        \"$PY\" ${CP[*]} -o \"$WORK/cp-ulysses\" --results \"$WORK/u.jsonl\" --parallel ulysses:2 && \
        \"$PY\" ${CP[*]} -o \"$WORK/cp-ring\" --results \"$WORK/r.jsonl\" --parallel ring:2 && \
        \"$PY\" -c \"from kinema import video_io as v; a = v.read_video('$WORK/cp-one')[0].astype(int); \
[print(k, 'max |diff| vs one process', abs(a - v.read_video('$WORK/cp-' + k)[0].astype(int)).max()) for k in ('ulysses', 'ring')]\""
else
    echo "train_ddp and context_parallel skipped (one GPU; NCCL needs a GPU per process)" | tee -a "$OUT/stages.txt"
fi
stage folder 60 "$PY" scripts/bench_gpu.py folder "$WAN"
stage backends 50 sh -c "\"$PY\" scripts/wan_parity.py --device cuda --dtype bfloat16 --bench --no-parity > \"$OUT/backends.json\""
stage flops 70 "$PY" scripts/bench_flops.py --model "$WAN" --device cuda --load-dtype bfloat16 --dtypes bfloat16 \
    "${SIZE[@]}" --json-out "$OUT/flops.json"
stage memory 185 "$PY" scripts/bench_gpu.py memory "$WAN" "${SIZE[@]}" --timeout 45 --json-out "$OUT/memory.json"
stage wan 60 "$PY" scripts/bench_wan.py --folder "$WAN" --device cuda --dtype bfloat16 --frames 21 --height 480 \
    --width 832 --steps 3 --pairs 1 --json-out "$OUT/wan.json"
"$PY" scripts/bench_gpu.py report "$OUT"
echo "gpu_check: $SECONDS s in all; results in $OUT"
