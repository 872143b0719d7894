#!/usr/bin/env bash
# Evaluate a trained model folder, ship it as the default weights, and write the model card figures
# (evaluations, restyle and long-clip benchmarks, the README's sample GIFs).
#   bash scripts/report_default.sh runs/default   # RUN folder holding model/ and checkpoints/
set -euo pipefail
RUN=${1:-runs/default}
OUT=docs/default-model
mkdir -p "$OUT" samples
python scripts/ship_default.py "$RUN/model"
python - "$RUN" "$OUT" <<'PY'
import json, sys
from pathlib import Path
from kinema.models.family import load_model
from kinema.train import latest_checkpoint, plot_curve, sample_grid, TrainConfig
run, out = Path(sys.argv[1]), Path(sys.argv[2])
meta = json.loads((latest_checkpoint(run) / "meta.json").read_text())
name = "denoiser_loss.png" if run.name == "default" else f"denoiser_loss_{run.name}.png"  # one curve per run
first = meta["history"][0][0] - 1 if meta["history"] else 0
plot_curve(meta["history"], out / name, f"denoiser loss (flow matching MSE), steps {first:,}-{meta['step']:,} ({run.name})")
if (run / "vae_loss.png").is_file():
    (out / "vae_loss.png").write_bytes((run / "vae_loss.png").read_bytes())
model = load_model(None)
sample_grid(model, TrainConfig().sample_prompts, Path("samples/default_t2v.gif"))
print("step", meta["step"])
PY
kinema eval --suite vae --split heldout --json-out "$OUT/eval_vae.json"
kinema eval --suite world --split heldout --json-out "$OUT/eval_world.json"
kinema eval --suite animate --split heldout --per-combo 1 --json-out "$OUT/eval_animate.json"
python scripts/bench_generate.py --json-out "$OUT/bench_generate.json"
python scripts/bench_restyle.py --json-out "$OUT/bench_restyle.json" | tee "$OUT/bench_restyle.txt"
python scripts/bench_restyle.py --first-clip 1000 --json-out "$OUT/bench_restyle_tuning.json" \
    | tee "$OUT/bench_restyle_tuning.txt"
python scripts/bench_restyle.py --no-pixel-fusion --flow-steps 0.5 --json-out "$OUT/bench_restyle_latent_only.json" \
    | tee "$OUT/bench_restyle_latent_only.txt"
mkdir -p build
python scripts/bench_long.py --json-out "$OUT/bench_long.json" --keep build/long256.mp4 | tee "$OUT/bench_long.txt"
python scripts/readme_gifs.py --long-from build/long256.mp4
