"""Copy a trained model folder into the package as the default weights (float16 safetensors).

    python scripts/ship_default.py runs/default/model
    python scripts/ship_default.py runs/control3/model --backbone-from kinema/weights/default   # the control stage, as shipped
    python scripts/ship_default.py kinema/weights/default --student-control runs/sfc2/control-lora.safetensors   # the student's adapter
    python scripts/ship_default.py kinema/weights/default --student-restyle runs/rl/restyle-lora.safetensors   # its restyle LoRA

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
# With the control input (27,000 steps): the source's edge maps at scale 2 and the source redrawn whole (strength 1,
# no layout injection), chosen on world clips 1000-1005 (docs/restyle-control/tuning/): colour 100%, IoU 0.68,
# track 1.08 px, shape kept 100%; FlowEdit with the control drew the shapes closer (IoU 0.72) but recoloured 83%.
CONTROL = dict(restyle_strength=1.0, restyle_structure=0.0, restyle_guidance=7.5, restyle_control_scale=2.0,
               restyle_fast=True)
# Restyle runs the 4-step student (restyle_fast; docs/restyle-control: IoU 0.800 vs 0.686 on the tuning clips). The
# student samples at flow shift 8 (chosen on the training split, docs/default-model/fast/shift/). With the 29,500-step
# adapter it restyles under control scale 1.5 with guidance 3 on its first step only (interval (0.95, 1]; the others
# unguided), chosen on tuning clips: 24 own-renderer clips of seeds 100-123 (`bench_restyle.py --renderer own
# --first-clip 100 --clips 24 --fast`) and world clips 1000-1005: colour 96% / 100%, IoU 0.856 / 0.807, track
# 0.73 / 0.68 px (unguided: colour 96% / 100%, IoU 0.816 / 0.811, track 1.35 / 0.75 px; docs/restyle-control/student-guidance/).
# The 30,500-step adapter (object-weighted loss, close colour pairs oversampled; configs/default-control.yaml) ships
# under the same settings: re-tuning on close pairs (control 2, strength 0.75) read worse.
FAST = dict(shift=8.0, restyle=dict(guidance=3.0, guidance_interval=[0.95, 1.0], control_scale=1.5))
# The pace of long clips: the 25,500-step weights told a 256-frame clip's length crept at about the world's
# pace in single windows (direction 85%, scripts/probe_pace.py) but lost the direction when windows were
# fused (6 of 16 chunks, worst seam 5.56, scripts/bench_long.py); told 16 frames: 16 of 16 chunks, seam 1.83
# where the object jumps back. So this model makes clips of any length at a 16-frame clip's pace unless
# --motion-length says otherwise.
PACE = dict(motion_length=16)
# Long clips at that pace: windows that follow the clip's motion (--follow-motion) make one continuous motion
# that wraps round the frame instead of a 16-frame trajectory repeated (256 frames: no centroid jumps, worst
# seam 1.26 vs 1.84 without; scripts/bench_long.py).
FOLLOW = dict(follow_motion=True)


def student_with_control(student: Path, control: Path, out: Path) -> Path:
    """The student's LoRA file with a LoRA of the control adapter beside it (`kinema train` with `base_lora` the
    student and `lora_targets` the adapter's layers: the adapter trained under the network the student runs), written
    to `out` atomically. Both parts must have one rank and alpha (a file has one of each); the loader adapts the layers
    the keys name, so the student's control adapter differs and the full model's stays as it was."""
    from kinema.models.lora import META, read_lora

    (base, meta), (extra, cmeta) = read_lora(student), read_lora(control)
    if (meta["rank"], meta["alpha"]) != (cmeta["rank"], cmeta["alpha"]):
        raise SystemExit(f"{control}: rank/alpha {cmeta['rank']}/{cmeta['alpha']}, the student's "
                         f"{meta['rank']}/{meta['alpha']}; train it with the student's")
    base = {k: v for k, v in base.items() if not k.startswith("control.")}  # a control part shipped before is replaced
    if not extra or not all(k.startswith("control.") for k in extra):
        raise SystemExit(f"{control} must adapt the control adapter's layers only (lora_targets: '^control\\..*')")
    meta["targets"] = f"{meta['targets'].split(' | ')[0]} | {cmeta['targets']}"
    meta["control"] = dict(step=cmeta.get("step"), config=cmeta.get("config"))
    return _atomic(out, lambda tmp: save_file({**base, **extra}, str(tmp), metadata={META: json.dumps(meta)}))


def _atomic(out: Path, write) -> Path:
    """`write(tmp)` to a temporary file beside `out`, then renamed over it: an interrupted write leaves `out` as it was."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


RESTYLE_LORA = "fast-restyle.safetensors"


def student_restyle(folder: Path, lora: Path, name: str = RESTYLE_LORA) -> Path:
    """`lora` (a backbone LoRA trained with the student as `base_lora`, the control on: `kinema train` with
    `on_policy`) copied into `folder` as `name` and named in its index (`fast.restyle.lora`), so restyle under the
    student stacks it and generate and animate do not; each file written atomically."""
    from kinema.models.lora import read_lora

    tensors, _ = read_lora(lora)
    if any(k.startswith("control.") for k in tensors):
        raise SystemExit(f"{lora} adapts the control adapter; put that into the student's file (--student-control)")
    index_file = folder / "kinema.json"
    index = json.loads(index_file.read_text())
    index["fast"].setdefault("restyle", {})["lora"] = name
    _atomic(folder / name, lambda tmp: shutil.copyfile(lora, tmp))
    _atomic(index_file, lambda tmp: tmp.write_text(json.dumps(index, indent=2)))
    return folder / name


def ship(src: Path, dest: Path = DEST, backbone_from: Path | None = None) -> Path:
    """Copy `src` to `dest` in float16; with `backbone_from`, every denoiser tensor but the control adapter's comes from
    that folder instead (the control stage's run trained the motion and length MLPs beside the adapter; shipping the
    earlier backbone keeps text-to-video and image-to-video exactly as they were)."""
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
                    tensors = load_file(f)
                    if backbone_from is not None and sub == "denoiser":
                        base = load_file(Path(backbone_from) / sub / f.name)
                        tensors.update({k: v for k, v in base.items() if not k.startswith("control.")})
                    tensors = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in tensors.items()}
                    save_file(tensors, tmp / sub / f.name)
                elif f.suffix == ".json":
                    shutil.copy2(f, tmp / sub / f.name)
        index = json.loads((src / "kinema.json").read_text())
        control = json.loads((src / "denoiser" / "config.json").read_text()).get("control_channels", 0)
        index["defaults"] = {**index.get("defaults", {}), **(CONTROL if control else RESTYLE), **PACE, **FOLLOW}
        fast = index.get("fast")
        if fast:
            fast = index["fast"] = {**fast, **FAST}  # the few-step student's LoRA travels with the folder (float32: a few MB)
            # a run's export keeps no student; then the shipped folder's (trained on the same backbone) stays
            shutil.copy2(src / fast["lora"] if (src / fast["lora"]).is_file() else dest / fast["lora"], tmp / fast["lora"])
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
    p.add_argument("--backbone-from", default=None, help="take every denoiser tensor but the control adapter's from here")
    p.add_argument("--student-control", default=None, metavar="LORA",
                   help="instead: put this control-adapter LoRA (trained under the student) into the folder SRC's "
                        "student file, in place")
    p.add_argument("--student-restyle", default=None, metavar="LORA",
                   help=f"instead: copy this backbone LoRA (trained under the student, control on) into SRC as "
                        f"{RESTYLE_LORA}, stacked on the student when it restyles")
    args = p.parse_args()
    if args.student_restyle:
        print(student_restyle(Path(args.src), Path(args.student_restyle)))
    elif args.student_control:
        index = json.loads((Path(args.src) / "kinema.json").read_text())
        target = Path(args.src) / index["fast"]["lora"]
        print(student_with_control(target, Path(args.student_control), target))
    else:
        print(ship(args.src, backbone_from=args.backbone_from))
