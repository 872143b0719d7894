"""Call a running `kinema serve` from Python with gradio_client: one clip from each API name.

    kinema serve &                                   # http://127.0.0.1:7860
    python scripts/ui_client_example.py              # writes ui-clips/{generate,animate,restyle,extend}.mp4

Each API name takes the task's options by their CLI names (snake case); what is left out takes the
page's default (the model folder's). Each call returns the clip, its GIF, the sidecar and the command.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from gradio_client import Client, handle_file

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:7860/")
    ap.add_argument("--out", default="ui-clips", help="folder for the clips")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    ap.add_argument("--size", type=int, default=None, help="height and width (default: the model's)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    client = Client(args.url, verbose=False)
    cheap = {k: v for k, v in dict(steps=args.steps, height=args.size, width=args.size).items() if v is not None}
    calls = {
        "generate": dict(prompt="a red circle moving right on a blue background", frames=16, seed=1),
        "animate": dict(image=handle_file(SAMPLES / "anchor.png"), prompt="a yellow square moving left on a purple background",
                        frames=16),
        "restyle": dict(video=handle_file(SAMPLES / "source.mp4"), prompt="a yellow circle moving right on a blue background",
                        max_frames=9),
        "extend": dict(video=handle_file(SAMPLES / "source.mp4"), prompt="a red circle moving right on a blue background",
                       frames=24),
    }
    made = {}
    for task, options in calls.items():
        clip, gif, sidecar, command = client.predict(**options, **cheap, api_name=f"/{task}")
        video = clip["video"] if isinstance(clip, dict) else clip
        made[task] = shutil.copy(video, out / f"{task}.mp4")
        print(f"{made[task]}: {sidecar['frames_written']} frames, seed {sidecar['seed']}; {command}")
    return made


if __name__ == "__main__":
    main()
