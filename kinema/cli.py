"""The `kinema` command.

    kinema generate "a red circle moving right on a blue background" -o clip.mp4
    kinema generate "a yellow square moving up on a black background" -o clip.gif --seed 3 --steps 30
    kinema generate "a yellow square moving right on a purple background" --frames 256 -o long.mp4
    kinema generate "a red circle" --frames 192 -o turn.mp4 --prompt-schedule "0:a red circle moving right|96:a red circle moving left"
    kinema extend clip.mp4 "a red circle moving right on a blue background" --frames 128 -o longer.mp4
    kinema animate photo.png "a red circle moving right on a blue background" -o clip.mp4
    kinema animate start.png "a red circle moving right" -o clip.gif --last-image end.png --resize pad
    kinema restyle clip.mp4 "a green circle moving right on a black background" -o out.mp4
    kinema restyle clip.mp4 "a yellow square moving up on a blue background" -o out.gif --strength 0.8 --no-flow
    kinema info                      # the default model: components, parameters, memory estimate
    kinema generate "a cat surfing a wave" --model Wan2.1-T2V-1.3B-Diffusers --offload model -o cat.mp4
    kinema info runs/default/model --frames 64 --height 128 --width 128
    kinema init runs/default/model --preset small
    kinema train configs/default.yaml --model runs/default/model
    kinema eval --suite world --split heldout
    kinema generate "a red circle moving right on a blue background" --cache first-block:0.1 -o fast.mp4
    kinema generate "a red circle moving right on a blue background" --quantize int8 --compile -o quick.mp4

Every command checks its arguments before loading a model; a bad one ends with a
one-line error and exit status 2, and no output file is left behind.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from .errors import KinemaError

#################################################################################
#                                   Commands                                    #
#################################################################################

# argparse names that are not options of a task (the rest are, by the same snake-case names)
NOT_OPTIONS = ("command", "func", "output", "overwrite", "quiet", "model", "prompt", "video", "image", "motion_adapter")


def _model(args):
    """--model, or with --motion-adapter (AnimateDiff on an SD 1.5 folder) the two described together."""
    if getattr(args, "motion_adapter", None) is None:
        return args.model
    from .models.family import describe

    return describe(args.model, motion_adapter=args.motion_adapter)


def cmd_task(args) -> None:
    """generate, animate, restyle, extend: parse -> prepare (every check) -> run -> write."""
    from . import jobs, video_io

    out, _ = video_io.check_outputs(args.output, overwrite=args.overwrite)  # the clip and its sidecar, before any work
    inputs = [getattr(args, name) for name in ("image", "video") if hasattr(args, name)]
    options = {k: v for k, v in vars(args).items() if k not in NOT_OPTIONS}
    job = jobs.PREPARE[args.command](*inputs, args.prompt, _model(args), **options)
    for warning in job.warnings:
        print(f"kinema: warning: {warning}", file=sys.stderr)
    result = jobs.run(job, progress=not args.quiet)
    _, sidecar = video_io.write_outputs(out, result, overwrite=args.overwrite)
    if not args.quiet:
        f = result.frames
        print(f"wrote {out} ({f.shape[0]} frames, {f.shape[2]}x{f.shape[1]}, {result.fps:g} fps) and {sidecar.name}")


def cmd_info(args) -> None:
    from .models.family import describe, family_of

    info = describe(args.model, motion_adapter=args.motion_adapter)
    d = info.defaults
    frames, height, width = args.frames or d.frames, args.height or d.height, args.width or d.width
    report, lines = family_of(info).report(info, frames, height, width)
    import torch

    from . import resources
    from .jobs import process_memory  # the whole process's peak on CPU, too

    # in the dtype `kinema generate --dtype` would run on the CPU (auto: bfloat16 where this CPU runs it fast)
    dtype = resources.pick_dtype(args.dtype, torch.device("cpu"))
    nbytes = torch.empty((), dtype=dtype).element_size()
    est = {k: f"{v / 2**20:.0f} MiB" for k, v in process_memory(info, frames, height, width, nbytes).items()}
    name = str(dtype).removeprefix("torch.")
    report["process_estimate"] = dict(frames=frames, height=height, width=width, dtype=name, **est)
    lines.append(f"process   ~{est['total']} peak RSS for `kinema generate` of {frames} frames {width}x{height} on "
                 f"CPU in {name} (libraries {est['libraries']}, model {est['model']}, clip {est['clip']})")
    if args.quantize != "none":  # the denoiser's weights before and after, from the headers
        from .models.runtime import info_lines

        dtype = report.get("memory_estimate", {}).get("dtype", name)  # the family's estimate's, else the CPU run's
        report["quantize_estimate"], more = info_lines(info, args.quantize, dtype)
        lines += more
    print(json.dumps(report, indent=2, default=str) if args.json else "\n".join(lines))


def cmd_init(args) -> None:
    from .models.kinema_family import init

    path = init(args.dir, preset=args.preset, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote a randomly initialised {args.preset} model to {path}")


def cmd_train(args) -> None:
    from .errors import require

    tuning = ("full", "frames", "stride", "steps", "skip_bad", "lora_out", "lr", "lora", "vae_steps", "height", "width",
              "motion_adapter")
    if args.data is None:
        given = [k for k in tuning if getattr(args, k) not in (None, False, 1)]
        require(not given, f"--{given[0].replace('_', '-')} fine-tunes on your clips: pass --data DIR" if given else "")
        require(args.config is not None, "give a training config (e.g. configs/default.yaml), or --data DIR to "
                                         "fine-tune on your own clips")
        from .train import train

        path = train(args.config, args.model, args.run, args.stages)
        print(f"trained model in {path}")
        return
    require(args.stages == "all", "--data trains the denoiser only; drop --stages")
    require(not (args.full and args.lora is not None), "--full trains every weight; drop --lora RANK (or --full)")
    require(not (args.full and args.vae_steps), "--vae-steps adapts the autoencoder with a LoRA; drop it with --full")
    from .train import finetune

    path = finetune(args.data, args.model, args.run, rank=8 if args.lora is None else args.lora, full=args.full,
                    frames=args.frames, stride=args.stride, steps=args.steps or 1000, skip_bad=args.skip_bad,
                    lora_out=args.lora_out, lr=args.lr, batch=args.batch, config=args.config, vae_steps=args.vae_steps or 0,
                    height=args.height, width=args.width, motion_adapter=args.motion_adapter)
    print(f"wrote {'the fine-tuned model in ' if args.full else 'the LoRA '}{path}")


def cmd_eval(args) -> None:
    import torch

    from .resources import pick_threads
    from .world.evaluate import run_eval

    torch.set_num_threads(pick_threads(args.threads))

    run_eval(args)


#################################################################################
#                                    Parser                                     #
#################################################################################


def int_at_least(low: int):
    """An argparse type: a whole number >= `low`."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
        return v

    return parse


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)


def interval(text: str) -> tuple[float, float]:
    """LO:HI noise levels (0 <= LO < HI <= 1); a single LO means LO:1."""
    parts = text.split(":")
    if len(parts) > 2:
        raise argparse.ArgumentTypeError(f"expected LO:HI such as 0.3:1, got {text!r}")
    lo, hi = (finite_float(p) for p in (parts if len(parts) == 2 else [parts[0], "1"]))
    if not 0 <= lo < hi <= 1:
        raise argparse.ArgumentTypeError(f"needs 0 <= LO < HI <= 1, got {text!r}; 0:1 guides every step")
    return lo, hi


def finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return v




class Choices:
    """argparse choices read from a registry (presets, schedulers, backends...) when first needed.

    With a metavar, argparse reads choices only to check a given value or to show help
    (`HelpFormatter` lists them), so building the parser imports no network or pipeline module;
    the registry stays the one list of names.
    """

    def __init__(self, module: str, name: str, first: tuple[str, ...] = ()):
        self.module, self.name, self.first = module, name, first

    def names(self) -> tuple[str, ...]:
        import importlib

        return (*self.first, *getattr(importlib.import_module(self.module), self.name))

    def __contains__(self, value) -> bool:
        return value in self.names()

    def __iter__(self):
        return iter(self.names())


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each default shown once (not "None" for an option the model fills in), and a registry-backed option's names."""

    def _get_help_string(self, action):
        help = action.help or ""
        unset = action.default == "" or any(action.default is v for v in (None, False, argparse.SUPPRESS))  # 0 is a default
        shown = "default" in help or unset or not action.option_strings
        help = help if shown else help + " (default: %(default)s)"  # each default once, and none for "unset"
        return help + " (one of: %(choices)s)" if isinstance(action.choices, Choices) else help


def add_model_options(s) -> None:
    """Options every model-running command shares."""
    s.add_argument("--model", default=None, help="model folder (default: the weights shipped with kinema)")
    s.add_argument("--motion-adapter", default=None, metavar="DIR",
                   help="AnimateDiff: a MotionAdapter folder to put on the Stable Diffusion 1.5 folder given as --model")
    s.add_argument("--device", default="auto", metavar="DEVICE", choices=Choices("kinema.resources", "DEVICES"), help="where to run")
    s.add_argument("--dtype", default="auto", metavar="DTYPE", choices=Choices("kinema.resources", "DTYPES", first=("auto",)),
                   help="weights and activations dtype (auto: bfloat16 on CUDA, float32 on CPU)")
    s.add_argument("--attention", default="sdpa", metavar="BACKEND", choices=Choices("kinema.models.runtime", "ATTENTION"),
                   help="attention backend: sdpa, xformers, chunked for kinema's models; for transformer families "
                        "(Wan, LTX-Video) diffusers' dispatcher: native (= sdpa), flex, flash, _flash_3, sage, xformers, ...")
    s.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads (default: KINEMA_THREADS, else OMP_NUM_THREADS, else the CPUs this process may use)")
    s.add_argument("--lora", action="append", default=None, metavar="FILE[:SCALE]",
                   help="load a LoRA onto the denoiser at SCALE (default 1); repeat to stack several")
    s.add_argument("--lora-strict", action=argparse.BooleanOptionalAction, default=True,
                   help="a LoRA layer the denoiser lacks is an error (--no-lora-strict: load the layers that match)")
    s.add_argument("--cache", default=None, metavar="METHOD[:VALUE]",
                   help="step cache: reuse the denoiser's deep features between steps where they barely change. "
                        "none, first-block[:THRESHOLD] (default 0.1; relative change of the first block's output "
                        "below which a step reuses the last full one), taylorseer[:INTERVAL] (one full step in "
                        "INTERVAL, default 2, the others extrapolated); Wan also magcache[:THRESHOLD], fastercache, "
                        "pab (default: none)")
    s.add_argument("--offload", default="none", metavar="MODE", choices=Choices("kinema.resources", "OFFLOAD_MODES"),
                   help="diffusers checkpoints (Wan, LTX-Video, AnimateDiff) on CUDA: keep weights on the CPU and move each component (model) or each "
                        "layer (sequential) to the GPU while it runs")


def add_sampling_options(s, frames_help: str = "frames to generate (default: the model's)") -> None:
    """Options of `generate` that the other drivers share."""
    s.add_argument("-o", "--output", required=True, help="output: .mp4, .gif, .webp, or a folder name (no suffix) for "
                                                         "PNGs; the settings go beside it in OUTPUT.json")
    s.add_argument("--frames", type=positive_int, default=None, help=frames_help)
    s.add_argument("--height", type=positive_int, default=None, help="frame height in pixels (default: the model's)")
    s.add_argument("--width", type=positive_int, default=None, help="frame width in pixels (default: the model's)")
    s.add_argument("--steps", type=positive_int, default=None, help="denoising steps (default: the model's)")
    s.add_argument("--guidance", type=finite_float, default=None, help="classifier-free guidance scale; 1 disables it (default: the model's)")
    s.add_argument("--guidance-interval", type=interval, default=None, metavar="LO:HI",
                   help="guide only at noise levels in (LO, HI], the conditional prediction alone elsewhere (one "
                        "forward instead of two); 0:1 guides every step (default: the model's, 0.5:1 for the default model)")
    s.add_argument("--negative-prompt", default="", help="what to steer away from (the unconditional prompt)")
    s.add_argument("--seed", type=nonneg_int, default=0, help="random seed; the same seed gives the same clip")
    s.add_argument("--fps", type=finite_float, default=None, help="frames per second of the written file (default: the model's; restyle and extend: the source's)")
    s.add_argument("--scheduler", default=None, metavar="SOLVER", choices=Choices("kinema.models.schedulers", "SCHEDULERS"),
                   help="flow-matching solver (default: the model's; euler for kinema models, UniPC for Wan)")
    s.add_argument("--shift", type=finite_float, default=None, help="timestep shift of the schedule (default: the model's)")
    s.add_argument("--decode-chunk-size", type=positive_int, default=16, help="latent frames decoded at once")
    s.add_argument("--motion-length", type=positive_int, default=None,
                   help="pace the motion as in a clip of this many frames (models with a length embedding: longer "
                        "clips move more slowly, so the object stays in frame; default: the model folder's "
                        "defaults.motion_length, 16 for the default model, else the clip's frames)")
    s.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                   help="the model folder's few-step student (a LoRA it ships) at its steps, guidance and shift (4 "
                        "steps, no guidance for the default model), unless --steps/--guidance/--shift say otherwise; "
                        "restyle uses it by default where the folder says so (defaults.restyle_fast): --no-fast "
                        "restyles with the full model")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_options(s)
    add_runtime_options(s)


def add_runtime_options(s) -> None:
    """Quantized weights, a GGUF transformer, compiled blocks (`models/runtime.py`, docs/runtime.md)."""
    s.add_argument("--quantize", default="none", metavar="MODE", choices=Choices("kinema.models.runtime", "QUANTIZE"),
                   help="the denoiser's linear layers in fewer bits (torchao, pip install 'kinema[quant]'): int8 "
                        "(CPU and CUDA), fp8 or nf4 (CUDA)")
    s.add_argument("--transformer", default=None, metavar="FILE.gguf",
                   help="a GGUF transformer file (e.g. a community Q8_0 or Q4_K one) in place of the model folder's "
                        "transformer/ (Wan, LTX-Video; pip install 'kinema[gguf]')")
    s.add_argument("--compile", action="store_true",
                   help="torch.compile each repeated block of the denoiser; the first step at a new size compiles "
                        "(a warm-up of seconds to minutes), later steps and clips run faster")


def add_long_options(s, windows: bool = True, keys: str = "output frames") -> None:
    """Options of long clips: context windows, continuation and prompt schedules."""
    s.add_argument("--context-length", type=positive_int, default=None,
                   help="latent frames per window (default: the model's trained frames; at most 4x that)")
    s.add_argument("--context-stride", type=positive_int, default=None,
                   help="latent frames between window starts (default: a quarter of the context length in window "
                        "mode; three quarters in continuation, so windows overlap by a quarter)")
    if windows:
        s.add_argument("--mode", default="window", metavar="MODE", choices=Choices("kinema.pipelines.long_video", "MODES"),
                       help="window: fuse overlapping windows every step; continue: window after window")
        s.add_argument("--window-weights", default="pyramid", metavar="KIND", choices=Choices("kinema.pipelines.windows", "WEIGHT_KINDS"),
                       help="per-frame weights when fusing windows")
        s.add_argument("--follow-motion", action=argparse.BooleanOptionalAction, default=None,
                       help="windows follow the clip's motion: each sees the latents rolled back by how far the "
                            "content has moved (measured on the first window made alone), so they agree on one "
                            "continuous motion that wraps round the frame (default: the model folder's "
                            "defaults.follow_motion, on for the default model, else off)")
    s.add_argument("--prompt-schedule", default=None,
                   help='change the prompt along the clip, replacing PROMPT: "0:first prompt|96:second prompt" '
                        f"(keys are {keys}, increasing, the first 0)")
    s.add_argument("--prompt-transition", type=nonneg_int, default=0, help="frames of cross-fade at each schedule key")
    s.add_argument("--adain", action="store_true",
                   help="pin each continuation window's latent colour statistics to the first window's (AdaIN)")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2) instead of a usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    fmt = HelpFormatter
    p = Parser(prog="kinema", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__

    p.add_argument("--version", action="version", version=f"kinema {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (_generate_parsers, _animate_parser, _restyle_parser, _model_parsers,
                lambda sub, fmt: __import__("kinema.batch", fromlist=["add_parser"]).add_parser(sub, fmt),
                lambda sub, fmt: __import__("kinema.serve", fromlist=["add_parser"]).add_parser(sub, fmt)):
        add(sub, fmt)
    return p


def add_control_options(s) -> None:
    """generate/animate: a control clip's structure with the prompt's appearance (models with a control input)."""
    s.add_argument("--control", default=None, metavar="VIDEO",
                   help="take the structure (outlines and motion: soft edge maps) from this clip, the appearance from "
                        "PROMPT; its frames set --frames unless given, its size must be the clip's (models with a "
                        "control input, such as the default model)")
    s.add_argument("--control-scale", type=finite_float, default=None,
                   help="how strongly the control steers, 0 to 5 (default 1, as trained)")


def _generate_parsers(sub, fmt) -> None:
    """generate and extend."""
    s = sub.add_parser("generate", help="text-to-video", formatter_class=fmt)
    s.add_argument("prompt", help="what the clip shows")
    add_sampling_options(s)
    add_long_options(s)
    add_control_options(s)
    s.set_defaults(func=cmd_task)

    s = sub.add_parser("extend", help="continue a clip window by window", formatter_class=fmt,
                       description="Continue VIDEO as PROMPT says. --frames counts the whole output, the source "
                                   "included (default: the source plus the model's trained frames); --fps "
                                   "defaults to the source's.")
    s.add_argument("video", help="the clip to continue: mp4, gif, webp, or a folder of frames")
    s.add_argument("prompt", help="what happens next")
    s.add_argument("--resize", default="crop", metavar="POLICY", choices=Choices("kinema.video_io", "RESIZE_POLICIES"),
                   help="fit the clip to --height/--width: centre-crop to aspect, black bars, or stretch")
    add_sampling_options(s, frames_help="frames of the whole output, the given clip's included (default: the "
                                        "clip's frames plus the model's)")
    add_long_options(s, windows=False, keys="frames of the whole output, counted from the given clip's first")
    s.set_defaults(func=cmd_task)


def _animate_parser(sub, fmt) -> None:
    s = sub.add_parser("animate", help="image-to-video: a clip that starts on an image", formatter_class=fmt)
    s.add_argument("image", help="anchor image: PNG, JPEG, WebP, GIF (first frame), BMP or TIFF")
    s.add_argument("prompt", help="the motion and scene")
    s.add_argument("--last-image", default=None, help="also end on this image (models trained for first-and-last frames)")
    s.add_argument("--resize", default="crop", metavar="POLICY", choices=Choices("kinema.video_io", "RESIZE_POLICIES"),
                   help="fit images to the clip: centre-crop to aspect, black bars, or stretch")
    s.add_argument("--image-noise", type=finite_float, default=None,
                   help="std of the anchor's noise augmentation in latent space (default: the model's, 0.02)")
    add_sampling_options(s)
    add_control_options(s)
    s.set_defaults(func=cmd_task)


def _restyle_parser(sub, fmt) -> None:
    s = sub.add_parser("restyle", help="video-to-video: restyle a clip, keeping its motion", formatter_class=fmt,
                       description="Restyle VIDEO as PROMPT says: its frames are encoded, noised to --strength and "
                                   "denoised with PROMPT, taking the source's layout during the first --structure of "
                                   "the steps (--method sdedit), or edited without inversion from --source-prompt to "
                                   "PROMPT (--method flowedit); the decoded frames are fused along the source's optical flow. The "
                                   "output has the chosen frames' count and the source's fps (unless --fps); --frames "
                                   "does not apply.")
    s.add_argument("video", help="the source: mp4, webm, mov, mkv, avi, gif, webp, or a folder of frames")
    s.add_argument("prompt", help="what the restyled clip shows")
    s.add_argument("--strength", type=finite_float, default=None,
                   help="how far the source is noised: 0 returns it unchanged (no model run), 1 ignores it but for its "
                        "layout (default: the model's, 1 for the default model, else 0.7)")
    s.add_argument("--structure", type=finite_float, default=None,
                   help="fraction of the denoising steps, from the first, that take the source's layout (attention "
                        "queries/keys and mid-level features of a pass over the noised source); 0 turns it off "
                        "(default: the model's, 0 for the default model, which takes the layout from its control input)")
    s.add_argument("--method", default=None, metavar="METHOD", choices=Choices("kinema.pipelines.video_to_video", "METHODS"),
                   help="sdedit: noise the source to --strength and denoise with PROMPT; flowedit: inversion-free "
                        "(FlowEdit): from --strength down, move the source by the difference of PROMPT's and "
                        "--source-prompt's velocities (default: the model's, sdedit for the default model)")
    s.add_argument("--source-prompt", default=None,
                   help="flowedit: what the source shows, e.g. its caption (default: the empty prompt)")
    s.add_argument("--n-avg", type=positive_int, default=None, help="flowedit: noise draws averaged per step (default 1)")
    s.add_argument("--tail", type=finite_float, default=0.0,
                   help="flowedit: fraction of the steps that run, at the end, sampled plainly from the edit")
    s.add_argument("--control", default=None, metavar="KIND", choices=Choices("kinema.models.control", "KINDS"),
                   help="edges: the source's soft edge maps steer every denoising step (models with a control input); "
                        "none: they do not (default: edges where the model has the input)")
    s.add_argument("--control-scale", type=finite_float, default=None,
                   help="how strongly the control steers, 0 to 5 (default: the model's, 2 for the default model)")
    s.add_argument("--flow", action=argparse.BooleanOptionalAction, default=True,
                   help="guide by the source's optical flow: fuse the decoded frames (and, with --flow-steps, latents) along it")
    s.add_argument("--flow-steps", type=finite_float, default=0.0,
                   help="fraction of the denoising steps that run, from the first, during which to fuse the predicted "
                        "clean latents along the flow (default 0: the decoded frames are fused, see --pixel-fusion)")
    s.add_argument("--flow-strength", type=finite_float, default=0.8,
                   help="blend weight toward the flow-warped previous frame where the flow is reliable")
    s.add_argument("--pixel-fusion", action=argparse.BooleanOptionalAction, default=None,
                   help="also fuse the decoded frames along the flow (default: on with --flow, off with --no-flow)")
    s.add_argument("--max-frames", type=positive_int, default=None, help="restyle at most this many frames")
    s.add_argument("--stride", type=positive_int, default=1, help="take every k-th frame of the source")
    s.add_argument("--start", type=nonneg_int, default=0, help="first source frame to take")
    s.add_argument("--resize", default="crop", metavar="POLICY", choices=Choices("kinema.video_io", "RESIZE_POLICIES"),
                   help="fit frames to --height/--width: centre-crop to aspect, black bars, or stretch")
    s.add_argument("--context-length", type=positive_int, default=None,
                   help="latent frames per window for sources longer than the model's trained length (default: that length)")
    s.add_argument("--context-stride", type=positive_int, default=None,
                   help="latent frames between window starts (default: a quarter of the context length)")
    s.add_argument("--window-weights", default="pyramid", metavar="KIND", choices=Choices("kinema.pipelines.windows", "WEIGHT_KINDS"),
                   help="per-frame weights when fusing windows")
    add_sampling_options(s)
    s.set_defaults(func=cmd_task)


def _model_parsers(sub, fmt) -> None:
    """info, init, train, eval."""
    s = sub.add_parser("info", help="a model's components, parameters and a memory estimate", formatter_class=fmt)
    s.add_argument("model", nargs="?", default=None, help="model folder (default: the shipped weights)")
    s.add_argument("--motion-adapter", default=None, metavar="DIR", help="AnimateDiff: a MotionAdapter folder for an SD 1.5 --model")
    s.add_argument("--frames", type=positive_int, default=None, help="frames for the memory estimate")
    s.add_argument("--height", type=positive_int, default=None, help="height for the memory estimate")
    s.add_argument("--width", type=positive_int, default=None, help="width for the memory estimate")
    s.add_argument("--dtype", default="auto", metavar="DTYPE", choices=Choices("kinema.resources", "DTYPES", first=("auto",)),
                   help="dtype of the whole-process estimate (auto: what `kinema generate --dtype auto` picks on this CPU)")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--quantize", default="none", metavar="MODE", choices=Choices("kinema.models.runtime", "QUANTIZE"),
                   help="also estimate the denoiser's weights with --quantize MODE")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("init", help="write a randomly initialised model folder", formatter_class=fmt)
    s.add_argument("dir", help="model folder to create")
    s.add_argument("--preset", default="small", metavar="PRESET", choices=Choices("kinema.models.unet", "PRESETS"), help="backbone preset")
    s.add_argument("--seed", type=nonneg_int, default=0, help="initialisation seed")
    s.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("train", help="train a model folder on the world, or fine-tune it on your clips (--data)",
                       formatter_class=fmt)
    s.add_argument("config", nargs="?", default=None,
                   help="training config (YAML), e.g. configs/default.yaml (with --data: optional, replaces the "
                        "built-in fine-tuning settings)")
    s.add_argument("--model", required=True, help="model folder made by `kinema init`, rewritten as training goes; "
                                                   "with --data also a Wan, LTX-Video or AnimateDiff folder (a LoRA)")
    s.add_argument("--run", default=None, help="run folder for checkpoints, caches and logs (default runs/<config name>)")
    s.add_argument("--stages", default="all", choices=["all", "vae", "denoiser"], help="which stages to run")
    s.add_argument("--data", default=None, metavar="DIR",
                   help="fine-tune the denoiser on this folder of clips (mp4, gif, webm, frame folders), each with a "
                        "caption: NAME.txt beside it, or metadata.jsonl / metadata.csv with file,caption")
    s.add_argument("--lora", type=positive_int, default=None, metavar="RANK",
                   help="--data: train a LoRA of this rank (default 8), written to --lora-out")
    s.add_argument("--full", action="store_true", help="--data: train the denoiser's own weights (rewrites --model)")
    s.add_argument("--lora-out", default=None, metavar="FILE", help="--data: where the LoRA goes (default RUN/lora.safetensors)")
    s.add_argument("--frames", type=positive_int, default=None, help="--data: frames per clip (default: the model's)")
    s.add_argument("--stride", type=positive_int, default=1, help="--data: take every k-th frame of each clip")
    s.add_argument("--height", type=positive_int, default=None, help="--data: frame height (default: the model's; "
                                                                      "Wan, LTX-Video, AnimateDiff)")
    s.add_argument("--width", type=positive_int, default=None, help="--data: frame width (default: the model's)")
    s.add_argument("--motion-adapter", default=None, metavar="DIR",
                   help="--data: AnimateDiff's MotionAdapter folder to put on the Stable Diffusion 1.5 folder given as --model")
    s.add_argument("--steps", type=positive_int, default=None, help="--data: training steps (default 1000)")
    s.add_argument("--batch", type=positive_int, default=8, help="--data: clips per step")
    s.add_argument("--lr", type=finite_float, default=None, help="--data: learning rate (default 1e-3 LoRA, 1e-4 --full)")
    s.add_argument("--skip-bad", action="store_true", help="--data: list and leave out unreadable or short clips")
    s.add_argument("--vae-steps", type=int, default=None,
                   help="--data: first adapt the autoencoder with a LoRA for this many steps (for colours or textures "
                        "it cannot draw; training prints how well it draws the clips and hints when to), saved in "
                        "the same LoRA file (default 0)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval", help="score videos against captions with the world oracle, or run a suite", formatter_class=fmt)
    s.add_argument("videos", nargs="*", help="video files to score (with --caption), or none with --suite")
    s.add_argument("--caption", default=None, help="canonical caption the videos should show")
    s.add_argument("--source", default=None,
                   help="score the videos as edits of this clip: object-mask IoU, area ratio, track, shape kept")
    s.add_argument("--suite", default=None, choices=["world", "animate", "vae"], help="generate and score a fixed suite")
    s.add_argument("--split", default="heldout", choices=["heldout", "train", "all"], help="world split of the suite")
    s.add_argument("--per-combo", type=positive_int, default=2, help="clips per (colour, shape, motion)")
    s.add_argument("--steps", type=positive_int, default=None, help="denoising steps (default: the model's)")
    s.add_argument("--guidance", type=finite_float, default=None, help="guidance scale (default: the model's)")
    s.add_argument("--fast", action="store_true", help="--suite: the folder's few-step student at its settings "
                                                      "(as `kinema generate --fast`)")
    s.add_argument("--json-out", default=None, help="also write the results as JSON here")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --json-out file")
    add_model_options(s)
    s.set_defaults(func=cmd_eval)


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM cleans up as Ctrl-C does: temporaries removed, no output half-written


def _set_signal_handlers(handlers: dict) -> dict:
    """Install signal handlers (main thread only); return the ones they replace."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, h) for sig, h in handlers.items()}


def main(argv: list[str] | None = None) -> int:
    # SIGTERM and SIGHUP, and SIGINT even where the parent ignored it (a background job), end the run as
    # Ctrl-C does, from the start: torch and the rest are imported by the command, inside the try
    previous = _set_signal_handlers({signal.SIGTERM: _interrupt, signal.SIGHUP: _interrupt,
                                     signal.SIGINT: signal.default_int_handler})
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
    except KinemaError as e:
        print(f"kinema: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kinema: interrupted; nothing was written", file=sys.stderr)
        return 130
    except MemoryError:
        print("kinema: error: out of memory; try fewer --frames, a smaller --height/--width or --attention chunked", file=sys.stderr)
        return 2
    finally:
        _set_signal_handlers({sig: signal.SIG_DFL if h is None else h for sig, h in previous.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
