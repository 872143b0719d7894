"""The four forms of the web UI as data: each field is a CLI option, by the flag's snake-case name.

One table gives the page its inputs (labels, kinds, defaults from the model folder), the API its
parameter names, `jobs.PREPARE` its options, the sidecar its reproducing `kinema` command, and the
history the way back from a sidecar to a filled-in form. Nothing here imports gradio.
"""

from __future__ import annotations

import functools
import math
import shlex
from dataclasses import dataclass

from ..cli import Choices
from ..errors import KinemaError, require

#################################################################################
#                                    Fields                                     #
#################################################################################


@dataclass(frozen=True)
class Field:
    """One input: an option of the task's command (or `prompt`, an uploaded file, `random_seed`)."""

    name: str
    kind: str  # text, int, float, choice, switch (on/off), tristate (auto/on/off), image, video
    label: str
    choices: tuple | Choices = ()  # for choice and tristate: the registry's names
    group: str = "main"  # main, more (an accordion of sampling details), long (one of windows and schedules)
    # a blank number (a choice's "auto", an unset upload) means the CLI's default (the model's, the source's, automatic)
    optional: bool = False


TRISTATE = {"auto": None, "on": True, "off": False}
RESIZE = Choices("kinema.video_io", "RESIZE_POLICIES")

PROMPT = Field("prompt", "text", "Prompt")
NEGATIVE = Field("negative_prompt", "text", "Negative prompt")
SAMPLING = (  # after the prompt, the negative prompt and the frames
    Field("height", "int", "Height"),
    Field("width", "int", "Width"),
    Field("steps", "int", "Steps"),
    Field("guidance", "float", "Guidance"),
    Field("seed", "int", "Seed"),
    Field("random_seed", "switch", "Random seed"),
    Field("fps", "float", "fps (blank: the model's; restyle, extend: the source's)", group="more", optional=True),
    Field("scheduler", "choice", "Scheduler", Choices("kinema.models.schedulers", "SCHEDULERS"), group="more"),
    Field("shift", "float", "Schedule shift (blank: the model's)", group="more", optional=True),
    Field("motion_length", "int", "Motion length (blank: the model's)", group="more", optional=True),
    Field("fast", "tristate", "Fast: the model's few-step student (auto: restyle where the model says so)", tuple(TRISTATE),
          group="more"),
    Field("cache", "text", "Step cache: none, first-block:0.1, taylorseer:2 (blank: none)", group="more"),
    Field("quantize", "choice", "Quantize the denoiser's weights (int8: CPU and CUDA; fp8, nf4: CUDA)",
          Choices("kinema.models.runtime", "QUANTIZE"), group="more"),
    Field("compile", "switch", "Compile the denoiser's blocks (a warm-up first, then faster steps)", group="more"),
)
FRAMES = Field("frames", "int", "Frames")
CONTEXT = (
    Field("context_length", "int", "Context length, latent frames (blank: the model's)", group="long", optional=True),
    Field("context_stride", "int", "Context stride (blank: automatic)", group="long", optional=True),
)
SCHEDULE = (
    Field("prompt_schedule", "text", 'Prompt schedule, e.g. "0:a red circle moving right|96:a red circle moving left"', group="long"),
    Field("prompt_transition", "int", "Prompt transition (frames)", group="long"),
    Field("adain", "switch", "AdaIN (pin colours to the first window)", group="long"),
)
CONTROL_VIDEO = (  # generate, animate: structure from a clip, appearance from the prompt (models with a control input)
    Field("control", "video", "Control clip (optional: its outlines and motion steer the clip)", optional=True),
    Field("control_scale", "float", "Control scale (blank: 1)", group="more", optional=True),
)
WINDOW_WEIGHTS = Field("window_weights", "choice", "Window weights", Choices("kinema.pipelines.windows", "WEIGHT_KINDS"),
                       group="long")

FORMS: dict[str, tuple[Field, ...]] = {
    "generate": (PROMPT, NEGATIVE, FRAMES, *SAMPLING,
                 Field("mode", "choice", "Long clips", Choices("kinema.pipelines.long_video", "MODES"), group="long"),
                 *CONTEXT, WINDOW_WEIGHTS, Field("follow_motion", "tristate", "Follow motion", tuple(TRISTATE), group="long"),
                 *SCHEDULE, *CONTROL_VIDEO),
    "animate": (Field("image", "image", "Image"), PROMPT, Field("last_image", "image", "Last image (optional)"), NEGATIVE,
                FRAMES, *SAMPLING, Field("resize", "choice", "Resize", RESIZE),
                Field("image_noise", "float", "Image noise (blank: the model's)", optional=True), *CONTROL_VIDEO),
    "restyle": (Field("video", "video", "Source clip"), PROMPT, NEGATIVE,
                Field("method", "choice", "Method", Choices("kinema.pipelines.video_to_video", "METHODS")),
                Field("source_prompt", "text", "Source prompt (flowedit: what the source shows)"),
                Field("strength", "float", "Strength"),
                Field("control", "choice", "Structure control (auto: edges where the model reads them)",
                      Choices("kinema.models.control", "KINDS", first=("auto",)), optional=True),
                Field("control_scale", "float", "Control scale (blank: the model's for restyling)", group="more", optional=True),
                Field("structure", "float", "Structure (sdedit; blank: the model's)", optional=True),
                Field("flow", "switch", "Optical flow"), Field("flow_strength", "float", "Flow strength"),
                Field("flow_steps", "float", "Flow steps (fraction)"),
                Field("pixel_fusion", "tristate", "Pixel fusion", tuple(TRISTATE)),
                Field("max_frames", "int", "Max frames (blank: all)", optional=True), Field("stride", "int", "Stride"),
                Field("start", "int", "Start frame"), Field("resize", "choice", "Resize", RESIZE),
                Field("n_avg", "int", "Noise draws per step (flowedit; blank: 1)", group="more", optional=True),
                Field("tail", "float", "Plain sampling at the end, fraction of steps (flowedit)", group="more"),
                *SAMPLING, *CONTEXT, WINDOW_WEIGHTS),
    "extend": (Field("video", "video", "Clip to extend"), PROMPT, NEGATIVE,
               Field("frames", "int", "Frames of the whole output (blank: the clip's + the model's)", optional=True),
               Field("resize", "choice", "Resize", RESIZE), *SAMPLING, *CONTEXT, *SCHEDULE),
}
INPUTS = ("image", "video")  # positional inputs of the command, before the prompt
NOT_OPTIONS = ("prompt", "image", "video", "random_seed")

# the model folder's defaults shown in the form where the CLI's default is None: field -> ModelDefaults name
MODEL_DEFAULTS = dict(frames="frames", height="height", width="width", steps="steps", guidance="guidance",
                      scheduler="scheduler", fps="fps", image_noise="image_noise", motion_length="motion_length",
                      strength="restyle_strength", method="restyle_method")  # structure: blank is the model's
FROM_SOURCE = {("restyle", "fps"), ("extend", "fps"), ("extend", "frames")}  # left blank: the source clip's


def names(task: str) -> list[str]:
    return [f.name for f in FORMS[task]]


def cli_defaults(task: str) -> dict:
    """Every option's default as the `kinema TASK` parser has it (parsing a minimal command line)."""
    return dict(_cli_defaults(task))


@functools.lru_cache(maxsize=None)
def _cli_defaults(task: str) -> tuple:
    from ..cli import build_parser

    inputs = [x for x in INPUTS if any(f.name == x for f in FORMS[task])]
    ns = build_parser().parse_args([task, *["in.png"] * len(inputs), "p", "-o", "x.mp4"])
    return tuple(vars(ns).items())


def defaults(task: str, info) -> dict:
    """The form's initial values: the CLI's defaults, with the model folder's where the CLI leaves them to it."""
    cli, d = cli_defaults(task), info.defaults
    values = {}
    for f in FORMS[task]:
        v = cli.get(f.name)
        if v is None and f.name in MODEL_DEFAULTS and (task, f.name) not in FROM_SOURCE:
            v = getattr(d, MODEL_DEFAULTS[f.name])
        if f.name == "guidance" and task == "restyle" and d.restyle_guidance is not None:
            v = d.restyle_guidance
        if f.kind == "tristate":
            v = {None: "auto", True: "on", False: "off"}[v]
        if f.kind == "choice" and f.optional and v is None:
            v = "auto"
        values[f.name] = ("" if v is None else v) if f.kind == "text" else v
    values.update(prompt="", random_seed=False)
    return values


#################################################################################
#                          Form values -> options, command                      #
#################################################################################


def _whole(v, flag: str):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v != int(v):
        raise KinemaError(f"{flag} must be a whole number (got {v!r})")
    return int(v)


def _number(v, flag: str):
    require(not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v),
            f"{flag} must be a finite number (got {v!r})")
    return float(v)


def coerce(f: Field, v):
    """A form value as the CLI's parser would give it (None for a blank optional field)."""
    flag = "--" + f.name.replace("_", "-")
    if isinstance(v, str) and f.kind in ("int", "float"):
        v = v.strip()
        if v == "":
            v = None
        else:
            try:
                v = float(v)
            except ValueError:
                raise KinemaError(f"{flag} must be a number (got {v!r})") from None
    if v is None:
        require(f.kind not in ("image", "video") or f.optional or f.name == "last_image", f"no {f.label.lower()}: upload one")
        require(f.optional or f.kind in ("text", "image", "video"), f"{flag} is empty; give a value")
        return None
    if f.kind == "int":
        return _whole(v, flag)
    if f.kind == "float":
        return _number(v, flag)
    if f.kind == "text":
        require(isinstance(v, str), f"{flag} must be text")
        return v
    if f.kind == "switch":
        require(isinstance(v, bool), f"{flag} must be true or false (got {v!r})")
        return v
    if f.kind == "tristate":
        require(isinstance(v, str) and v in TRISTATE, f"{flag} must be one of {', '.join(TRISTATE)} (got {v!r})")
        return TRISTATE[v]
    if f.kind == "choice":
        if f.optional and v == "auto":
            return None
        require(isinstance(v, str) and v in f.choices, f"unknown {flag} {v!r}; choose one of {', '.join(f.choices)}")
        return v
    require(isinstance(v, str), f"{flag}: expected an uploaded file")  # image, video: a path in the upload area
    return v


def parse(task: str, values: dict) -> dict:
    """Form values (by field name; missing ones left out) checked and converted; an empty text is the CLI's default."""
    out, cli = {}, cli_defaults(task)
    for f in FORMS[task]:
        if f.name in values:
            v = coerce(f, values[f.name])
            out[f.name] = cli.get(f.name) if f.kind == "text" and f.name != "prompt" and not v else v
    return out


def split(task: str, values: dict) -> tuple[list, str, dict]:
    """(the command's positional inputs, the prompt, the options for `jobs.PREPARE[task]`) from parsed values.

    Blank optional fields go as None, as the CLI passes its unset flags.
    """
    inputs = [values.get(x) for x in INPUTS if any(f.name == x for f in FORMS[task])]
    options = {k: v for k, v in values.items() if k not in NOT_OPTIONS}
    return inputs, values.get("prompt", ""), options


def command(task: str, inputs: list[str], prompt: str, options: dict, output: str) -> str:
    """The `kinema TASK ...` command line that makes the same clip: each option that differs from the CLI's default."""
    cli = cli_defaults(task)
    words = ["-o", output]
    for name, v in options.items():
        if v is None or v == cli.get(name, object()):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(v, bool):
            words.append(flag if v else "--no-" + flag[2:])
        elif isinstance(v, (list, tuple)):  # a repeatable flag (--lora)
            for item in v:
                words += [flag, str(item)]
        else:
            words += [flag, str(v)]
    positionals = [*inputs, prompt]
    if any(p.startswith("-") for p in positionals):  # a prompt such as "-x" is not an option
        return shlex.join(["kinema", task, *words, "--", *positionals])
    return shlex.join(["kinema", task, *positionals, *words])


def from_command(line: str) -> tuple[str, dict]:
    """(task, form values) from a `kinema` command line made by `command`: how a past job loads back."""
    from ..cli import build_parser

    words = shlex.split(line)
    require(len(words) >= 2 and words[0] == "kinema" and words[1] in FORMS, f"not a kinema command: {line[:80]!r}")
    try:
        ns = vars(build_parser().parse_args(words[1:]))
    except SystemExit:
        raise KinemaError(f"the recorded command does not parse: {line[:80]!r}") from None
    task = words[1]
    values = {}
    for f in FORMS[task]:
        if f.name in ns and f.kind not in ("image", "video"):
            v = ns[f.name]
            if f.kind == "tristate" or (f.kind == "choice" and f.optional and v is None):
                v = {None: "auto", True: "on", False: "off"}[v]
            values[f.name] = v
    return task, values
