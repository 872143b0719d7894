"""Every subcommand driven with generated arguments: exit 0 or 2 with one line, no traceback, no stray file.

Arguments are drawn as tokens (`{W}` is a fresh work folder holding an existing clip, a folder named like a
clip, a plain file and a read-only folder; `{MODEL}` the tiny model; `{in:NAME}` a damaged input) and
filled in per example. Valid values stay cheap (a few 16x16 frames, one or two steps) and out-of-range ones
are refused before any work, so no example runs long; the memory probe is capped (conftest).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import PROMPT, check_contract, listing

FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
BAD_INT = ["0", "-1", "-16", "2.5", "1e3", "", "abc", "nan", "inf", "0x10", "9" * 30, " ", "--"]
BAD_FLOAT = ["nan", "-nan", "inf", "-inf", "1e308", "-1e308", "1e-320", "-1", "abc", "", "0x1p3", "1,5"]
BAD_SIZE = ["0", "-16", "15", "17", "1000000000", "16.0", "abc"]
BAD_FRAMES = ["0", "-1", "1000000000000", "2.5", "abc"]
BAD_STEPS = ["0", "-1", "1001", "1000000000000", "abc", "nan"]
GOOD_OUTPUTS = ("{W}/out.mp4", "{W}/out.gif", "{W}/out.webp", "{W}/outframes", "{W}/outframes/")
# missing parent, a folder, a file as parent, read-only (root writes there anyway), existing, unknown or odd names
BAD_OUTPUTS = ("{W}/missing/out.mp4", "{W}/dir.mp4", "{W}/file.txt/out.mp4", "{W}/ro/out.mp4", "{W}/existing.mp4",
               "{W}/out.avi", "{W}/out.MP4", "{W}", "{W}/", "/proc/kinema-out.mp4", "{W}/.", "{W}/out.mp4.json")
BAD_MODELS = ("{W}/file.txt", "{W}/nomodel", "{W}", "{W}/dir.mp4", "{in:zero-byte .mp4}")
DAMAGED = ["zero-byte .png", "text named .mp4", "truncated .mp4 (50%)", "header-only header.png",
           "declared size huge.png", "empty folder", "missing file", "unknown extension"]


@dataclass(frozen=True)
class Arg:
    """One piece of a command line: a positional (`flag` None) or an option, with cheap valid and bad values."""

    flag: str | None
    good: tuple = ()
    bad: tuple = ()
    required: bool = False  # never left out (positionals; options whose default would make a run slow)

    def pieces(self, values):
        return st.sampled_from(values).map(lambda v: [v] if self.flag is None else [self.flag, v])

    def valid(self):
        if not self.good:
            return st.just([])
        given = self.pieces(self.good)
        return given if self.required or self.flag is None else st.one_of(st.just([]), given)

    def invalid(self):
        return self.pieces(self.bad) if self.bad else self.valid()


def switch(flag: str) -> Arg:
    return Arg(None, ("", flag), ())  # an empty piece is dropped from the command line


@st.composite
def command_line(draw, name: str, args: list[Arg]):
    """`kinema NAME ...`: every piece valid or left out, except at most two drawn from their bad values."""
    broken = draw(st.sets(st.sampled_from(range(len(args))), max_size=2))
    argv = [name]
    for i, arg in enumerate(args):
        argv += [a for a in draw(arg.invalid() if i in broken else arg.valid()) if a != ""]
    return argv


def damaged(*good: str) -> tuple:
    return good, tuple(f"{{in:{d}}}" for d in DAMAGED)


BAD_CONFIGS = ("{W}/unknown.yaml", "{W}/python.yaml", "{W}/latin1.yaml", "{W}/list.yaml", "{W}/types.yaml",
               "{W}/nested.yaml", "{W}/intkey.yaml", "{W}/tabs.yaml", "{W}/dir.mp4", "{W}/absent.yaml", "{W}/existing.mp4")
UNKNOWN_FLAGS = Arg(None, ("",), ("--bogus", "-x", "extra-positional", "--frames", "--help", "--version", "--overwrite=yes"))
PROMPTS = Arg(None, (PROMPT,), ("", "   ", "x" * 10_001, "a red circle \udcff", "--"))
OUTPUT = Arg("-o", GOOD_OUTPUTS, BAD_OUTPUTS, required=True)
MODEL = Arg("--model", ("{MODEL}",), BAD_MODELS, required=True)
SAMPLING = [
    Arg("--height", ("16",), tuple(BAD_SIZE), True), Arg("--width", ("16", "32"), tuple(BAD_SIZE), True),
    Arg("--steps", ("1", "2"), tuple(BAD_STEPS), True), Arg("--guidance", ("1", "3.5"), tuple(BAD_FLOAT)),
    Arg("--fps", ("8", "0.5", "240"), tuple(BAD_FLOAT) + ("0.001", "241")), Arg("--seed", ("0", "7"), tuple(BAD_INT)),
    Arg("--shift", ("1", "3"), tuple(BAD_FLOAT)), Arg("--scheduler", ("unipc",), ("ddim", "")),
    Arg("--decode-chunk-size", ("1",), tuple(BAD_INT)), Arg("--device", ("cpu",), ("tpu", "cuda:x")),
    Arg("--dtype", ("float32",), ("float8", "float16")), Arg("--attention", ("chunked",), ("flash",)),
    Arg("--negative-prompt", ("blurry",), ("\udcff",)), switch("--overwrite"), Arg(None, ("--quiet",), (), True),
    Arg("--cache", ("first-block", "first-block:0.5", "taylorseer:1"),
        ("bogus", "", "first-block:0", "first-block:2", "first-block:nan", "taylorseer:0", "taylorseer:1.5", "pab",
         "magcache", "fastercache:2")),
    Arg("--quantize", ("none", "int8"), ("fp8", "nf4", "int4", "")),  # fp8, nf4: CUDA only
    Arg("--transformer", (), ("{W}/file.txt", "{W}/absent.gguf", "{W}/dir.mp4", "{in:zero-byte .mp4}")),  # none fits
    switch("--compile"),  # traced by Dynamo, no kernels built (`eager_compile`)
    UNKNOWN_FLAGS,
]
# the fuzzed model has no control input: every --control clip (good or damaged) and every --control-scale is refused
CONTROL = [Arg("--control", (), ("{in:one-frame .gif}", *(f"{{in:{d}}}" for d in DAMAGED[:3]))),
           Arg("--control-scale", (), ("1", "9", "-1", "nan"))]
LONG = [Arg("--context-length", ("2",), tuple(BAD_INT) + ("65",)), Arg("--context-stride", ("1",), tuple(BAD_INT)),
        Arg("--prompt-schedule", ("0:a red circle|1:a blue square",), ("1:a", "0:a|0:b", "0:", "x", "0:a|99999:b")),
        Arg("--prompt-transition", ("1",), tuple(BAD_INT)), switch("--adain")]

COMMANDS = {
    "generate": command_line("generate", [
        PROMPTS, OUTPUT, MODEL, Arg("--frames", ("1", "2", "3"), tuple(BAD_FRAMES)), Arg("--mode", ("continue",), ("both",)),
        Arg("--window-weights", ("flat",), ("cubic",)), *SAMPLING, *LONG, *CONTROL]),
    "animate": command_line("animate", [
        Arg(None, *damaged("{in:RGBA}", "{in:CMYK jpeg}", "{in:16-bit grey}")), PROMPTS, OUTPUT, MODEL,
        Arg("--frames", ("1", "2"), tuple(BAD_FRAMES), True), Arg("--resize", ("pad", "stretch"), ("zoom",)),
        Arg("--image-noise", ("0", "0.1"), tuple(BAD_FLOAT)), Arg("--last-image", (), ("{in:grey L}", "{W}")), *SAMPLING,
        *CONTROL]),
    "extend": command_line("extend", [
        Arg(None, *damaged("{in:one-frame .mp4}", "{in:folder of 3 frames}")), PROMPTS, OUTPUT, MODEL,
        Arg("--frames", ("6", "8"), tuple(BAD_FRAMES) + ("1", "3"), True), Arg("--context-length", ("2",), tuple(BAD_INT), True),
        Arg("--resize", ("pad",), ("zoom",)), *SAMPLING, *LONG[1:]]),
    "restyle": command_line("restyle", [
        Arg(None, *damaged("{in:one-frame .gif}", "{in:odd-sized 17x13 .mp4}", "{in:variable-frame-rate .gif}")),
        PROMPTS, OUTPUT, MODEL, Arg("--strength", ("0", "0.5", "1"), tuple(BAD_FLOAT)),
        Arg("--flow-steps", ("0", "1"), tuple(BAD_FLOAT)), Arg("--flow-strength", ("0.3",), tuple(BAD_FLOAT)),
        Arg("--structure", ("0", "0.5"), tuple(BAD_FLOAT)), switch("--no-flow"), switch("--pixel-fusion"), Arg("--max-frames", ("2", "3"), tuple(BAD_INT), True),
        Arg("--stride", ("2",), tuple(BAD_INT)), Arg("--start", ("1",), tuple(BAD_INT) + ("100",)),
        Arg("--frames", (), ("3",)), Arg("--context-length", ("2",), tuple(BAD_INT)),
        Arg("--method", ("flowedit", "sdedit"), ("pnp", "")), Arg("--source-prompt", ("a red circle",), ("x" * 10_001, "\udcff")),
        Arg("--n-avg", ("2",), tuple(BAD_INT)), Arg("--tail", ("0.3",), tuple(BAD_FLOAT) + ("1",)),
        Arg("--control", ("none",), ("edges", "depth", "")), Arg("--control-scale", (), ("1", "9", "nan")), *SAMPLING]),
    "info": command_line("info", [
        Arg(None, ("{MODEL}",), ("{W}", "{W}/file.txt", "{W}/no", "")), Arg("--frames", ("8", "1000000"), tuple(BAD_FRAMES)),
        Arg("--height", ("64",), tuple(BAD_SIZE)), Arg("--width", ("64",), tuple(BAD_SIZE)),
        Arg("--dtype", ("auto", "float32", "bfloat16"), ("float64", "float16", "")), switch("--json"), UNKNOWN_FLAGS]),
    "init": command_line("init", [
        Arg(None, ("{W}/newmodel", "{W}/deep/er/model", "{W}/emptydir"),
            ("{W}/copy", "{W}/dir.mp4", "{W}/file.txt", "{W}/existing.mp4", "{W}", "/proc/kinema-model", "{W}/ro/m")),
        Arg("--preset", ("tiny",), ("huge", ""), True), Arg("--seed", ("3",), tuple(BAD_INT)), switch("--overwrite"),
        UNKNOWN_FLAGS]),
    # train is only ever given bad configs: a valid one would start training
    "train": command_line("train", [
        Arg(None, BAD_CONFIGS, BAD_CONFIGS),
        MODEL, Arg("--run", ("{W}/run",), ("{W}/file.txt",)), Arg("--stages", ("vae",), ("all-of-it",)),
        # fine-tuning on a folder (`--data`, any family): the folder is never a usable one, the flags good or bad
        Arg("--data", (), ("{W}/emptydir", "{W}/file.txt", "{W}/missing", "")), Arg("--lora", ("4",), tuple(BAD_INT)),
        Arg("--frames", ("5",), tuple(BAD_INT)), Arg("--height", ("32",), tuple(BAD_INT)), Arg("--width", ("32",), tuple(BAD_INT)),
        Arg("--motion-adapter", (), ("{W}/emptydir", "{W}/file.txt", "{W}/missing")), switch("--full"), UNKNOWN_FLAGS]),
    # eval never gets a runnable --suite: with --suite it always has a bad model or videos too
    "eval": command_line("eval", [
        Arg(None, *damaged("{in:one-frame .gif}", "{in:folder of 3 frames}", "{in:odd-sized 33x19 .avi}")),
        Arg("--caption", (PROMPT,), ("a purple dodecahedron", "", "\udcff"), True), Arg("--suite", (), ("world", "vae", "all")),
        Arg("--source", ("{in:one-frame .gif}", "{in:folder of 3 frames}"), tuple(f"{{in:{d}}}" for d in DAMAGED)),
        Arg("--model", (), BAD_MODELS),
        Arg("--json-out", ("{W}/scores.json",), ("{W}/scores.txt", "{W}/missing/s.json", "{W}/dir.mp4")),
        Arg("--per-combo", (), tuple(BAD_INT)), Arg("--steps", (), tuple(BAD_STEPS)), Arg("--guidance", (), tuple(BAD_FLOAT)),
        UNKNOWN_FLAGS]),
}

CONFIGS = {
    "unknown.yaml": "seed: 1\nlearning_rate: 0.1\n",
    "python.yaml": "seed: !!python/object/apply:os.system ['touch {W}/pwned']\n",
    "list.yaml": "- seed\n- 1\n",
    "types.yaml": "seed: abc\nframes: [1, 2]\n",
    "nested.yaml": "vae: [1, 2]\n",
    "intkey.yaml": "1: 2\nseed: 0\n",
    "tabs.yaml": "seed:\t\t: [\n",
}


def make_work(root: Path) -> Path:
    """A fresh folder of the things a command line can point at."""
    work = root / f"w{len(list(root.iterdir()))}"
    work.mkdir()
    (work / "existing.mp4").write_bytes(b"precious bytes")
    (work / "dir.mp4").mkdir()
    (work / "emptydir").mkdir()
    (work / "file.txt").write_text("a plain file")
    (work / "ro").mkdir(mode=0o555)
    for name, text in CONFIGS.items():
        (work / name).write_text(text.replace("{W}", str(work)))
    (work / "latin1.yaml").write_bytes("seed: 1 # caf\xe9\n".encode("latin-1"))
    return work


def fill(argv: list[str], work: Path, model: Path, inputs: dict[str, Path]) -> list[str]:
    out = []
    for a in argv:
        if a.startswith("{in:"):
            a = str(inputs[a[4:-1]])
        out.append(a.replace("{W}", str(work)).replace("{MODEL}", str(model)))
    return out


@pytest.fixture(autouse=True)
def eager_compile(monkeypatch):
    """--compile compiles with torch.compile's eager backend here: Dynamo traces every block, but no C++ kernels are
    built (inductor takes minutes on a cold cache; tests/test_compile.py runs it)."""
    from kinema.models import runtime

    monkeypatch.setattr(runtime, "COMPILE_OPTIONS", {"backend": "eager"})


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(tiny_model_dir, root / "model-copy")  # `init --overwrite` may replace copies, never the fixture
    yield root
    for ro in root.rglob("ro"):
        ro.chmod(0o755)


def run_fuzz(cmd: str, argv: list[str], kinema, bad_inputs, tiny_model_dir, root: Path) -> None:
    images, videos = bad_inputs
    work = make_work(root)
    shutil.copytree(root / "model-copy", work / "copy")
    before = listing(work)
    args = fill(argv, work, tiny_model_dir, {**videos, **images})
    result = kinema(*args)
    after = listing(work)
    # a success may add the output, its sidecar, or the model folder init writes (and its parents)
    targets = {os.path.relpath(os.path.normpath(a), work) for a in args if a.startswith(str(work))}
    allowed = {p for p in after if any(p == t or t.startswith(p + "/") or p.startswith(t + "/") or p == t + ".json"
                                       for t in targets)}
    check_contract(result, before, after, allowed)
    assert not (work / "pwned").exists()
    assert cmd != "train" or result.code != 0 or "--help" in args or "--version" in args
    if result.code != 0 or "--overwrite" not in args:
        assert (work / "existing.mp4").read_bytes() == b"precious bytes"
    assert (work / "copy" / "kinema.json").is_file() or (result.code == 0 and "--overwrite" in args)


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_generated_arguments(cmd, kinema, bad_inputs, tiny_model_dir, fuzz_root):
    @FUZZ
    @given(argv=COMMANDS[cmd])
    def check(argv):
        run_fuzz(cmd, argv, kinema, bad_inputs, tiny_model_dir, fuzz_root)

    check()
