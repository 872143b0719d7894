"""Copy a trained model folder into the package as the default weights (float16 safetensors).

    python scripts/ship_default.py runs/default/model

Weights are stored in float16 to halve the download; `kinema.load` upcasts them to the
requested dtype (float32 on CPU). The folder is replaced atomically. The training record
in `kinema.json` travels with it, with the restyle settings below added to its defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

DEST = Path(__file__).resolve().parent.parent / "kinema" / "weights" / "default"
# Restyle settings of the shipped model, chosen on the tuning clips (`bench_restyle.py --first-clip 1000`)
# of the 21,000-step weights; see the README's model card.
RESTYLE = dict(restyle_strength=0.9, restyle_structure=0.3, restyle_guidance=7.5)
# The pace of long clips: the 29,000-step weights were trained on windows of wrapping world clips (the
# 16-frame pace at every length, the object leaving one side as it comes back on the other), so each clip is
# told its own length (no `defaults.motion_length`); the 25,500-step weights, trained on slow long clips, set
# 16 here.
PACE: dict = {}


def ship(src: Path, dest: Path = DEST) -> Path:
    src = Path(src)
    if not (src / "kinema.json").is_file():
        raise SystemExit(f"{src} is not a kinema model folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".default.tmp-", dir=dest.parent))
    try:
        for sub in ("denoiser", "vae", "scheduler"):
            (tmp / sub).mkdir()
            for f in (src / sub).iterdir():
                if f.suffix == ".safetensors":
                    tensors = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in load_file(f).items()}
                    save_file(tensors, tmp / sub / f.name)
                elif f.suffix == ".json":
                    shutil.copy2(f, tmp / sub / f.name)
        index = json.loads((src / "kinema.json").read_text())
        defaults = {k: v for k, v in index.get("defaults", {}).items() if k != "motion_length"}
        index["defaults"] = {**defaults, **RESTYLE, **PACE}
        (tmp / "kinema.json").write_text(json.dumps(index, indent=2))
        if (dest / "README.md").is_file():
            shutil.copy2(dest / "README.md", tmp / "README.md")
        for root, dirs, files in os.walk(tmp):
            os.chmod(root, 0o755)
            for f in files:
                os.chmod(os.path.join(root, f), 0o644)
        old = dest.with_name(".default.old")
        if dest.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="trained model folder, e.g. runs/default/model")
    print(ship(p.parse_args().src))
