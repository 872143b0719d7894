"""Every subcommand driven with generated arguments: exit 0 or 2 with one line, no traceback, no stray file.

Arguments are drawn as tokens (`{W}` is a fresh work folder holding an existing clip, a folder named like a
clip, a plain file and a read-only folder; `{MODEL}` the tiny model; `{in:NAME}` a damaged input) and
filled in per example. Valid values stay cheap (a few 16x16 frames, one or two steps) and out-of-range ones
are refused before any work, so no example runs long; the memory probe is capped (conftest).
"""

from __future__ import annotations

import itertools
import os
import shutil
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
OUTPUTS = ["{W}/out.mp4", "{W}/out.gif", "{W}/out.webp", "{W}/outframes", "{W}/outframes/",  # valid
           "{W}/missing/out.mp4", "{W}/dir.mp4", "{W}/file.txt/out.mp4", "{W}/ro/out.mp4", "{W}/existing.mp4",
           "{W}/out.avi", "{W}/out.MP4", "{W}", "{W}/", "/proc/kinema-out.mp4", "{W}/.", "{W}/out.mp4.json"]
MODELS = ["{MODEL}", "{MODEL}", "{MODEL}", "{W}/file.txt", "{W}/nomodel", "{W}", "{W}/dir.mp4", "{in:zero-byte .mp4}"]
UNKNOWN = [["--bogus"], ["--bogus", "3"], ["-x"], ["extra-positional"], ["--frames"], ["--help"], ["--version"],
           ["--overwrite=yes"], ["--quiet", "--quiet"]]
DAMAGED = ["zero-byte .png", "text named .mp4", "truncated .mp4 (50%)", "header-only header.png",
           "declared size huge.png", "empty folder", "missing file", "unknown extension"]


def opt(flag: str, good: list, bad: list):
    """An option left out, given a cheap valid value, or given a bad one."""
    given = [st.sampled_from(values).map(lambda v: [flag, v]) for values in (good, bad) if values]
    return st.one_of(st.just([]), *given)


def must(flag: str, good: list, bad: list):
    """An option always given (so no default makes the run slow), valid or bad."""
    return st.sampled_from(good + bad).map(lambda v: [flag, v])


def flag(name: str):
    return st.sampled_from([[], [name]])


def extras():
    return st.one_of(st.just([]), st.just([]), st.sampled_from(UNKNOWN))


def command(*parts):
    """Concatenate the drawn pieces of a command line."""
    return st.tuples(*parts).map(lambda pieces: list(itertools.chain.from_iterable(pieces)))


def fixed(*args):
    return st.just(list(args))


def choice(values):
    return st.sampled_from(values).map(lambda v: [v])


PROMPTS = [PROMPT, PROMPT, "", "   ", "x" * 10_001, "a red circle \udcff"]
SAMPLING = [
    must("--height", ["16"], BAD_SIZE), must("--width", ["16", "32"], BAD_SIZE), must("--steps", ["1", "2"], BAD_STEPS),
    opt("--guidance", ["1", "3.5"], BAD_FLOAT), opt("--fps", ["8", "0.5"], BAD_FLOAT), opt("--seed", ["0", "7"], BAD_INT),
    opt("--shift", ["1", "3"], BAD_FLOAT), opt("--scheduler", ["unipc"], ["ddim", ""]),
    opt("--decode-chunk-size", ["1"], BAD_INT), opt("--device", ["cpu"], ["tpu", "cuda:x"]),
    opt("--dtype", ["float32"], ["float8", "float16"]), opt("--attention", ["chunked"], ["flash"]),
    opt("--negative-prompt", ["blurry"], ["\udcff"]), flag("--overwrite"), fixed("--quiet"),
]
LONG = [opt("--context-length", ["2"], BAD_INT + ["65"]), opt("--context-stride", ["1"], BAD_INT),
        opt("--prompt-schedule", ["0:a red circle|1:a blue square"], ["1:a", "0:a|0:b", "0:", "x", "0:a|99999:b"]),
        opt("--prompt-transition", ["1"], BAD_INT), flag("--adain")]

COMMANDS = {
    "generate": command(fixed("generate"), choice(PROMPTS), must("-o", OUTPUTS[:5], OUTPUTS[5:]),
                        must("--model", MODELS[:1], MODELS[3:]), opt("--frames", ["1", "2", "3"], BAD_FRAMES),
                        opt("--mode", ["continue"], ["both"]), opt("--window-weights", ["flat"], ["cubic"]),
                        *SAMPLING, *LONG, extras()),
    "animate": command(fixed("animate"), choice(["{in:RGBA}", "{in:CMYK jpeg}"] + [f"{{in:{d}}}" for d in DAMAGED]),
                       choice(PROMPTS), must("-o", OUTPUTS[:5], OUTPUTS[5:]), must("--model", MODELS[:1], MODELS[3:]),
                       must("--frames", ["1", "2"], BAD_FRAMES), opt("--resize", ["pad", "stretch"], ["zoom"]),
                       opt("--image-noise", ["0", "0.1"], BAD_FLOAT), opt("--last-image", ["{in:grey L}"], ["{W}"]),
                       *SAMPLING, extras()),
    "extend": command(fixed("extend"), choice(["{in:one-frame .mp4}", "{in:folder of 3 frames}"]
                                              + [f"{{in:{d}}}" for d in DAMAGED]),
                      choice(PROMPTS), must("-o", OUTPUTS[:5], OUTPUTS[5:]), must("--model", MODELS[:1], MODELS[3:]),
                      must("--frames", ["6", "8"], BAD_FRAMES + ["1", "3"]), must("--context-length", ["2"], BAD_INT),
                      opt("--resize", ["pad"], ["zoom"]), *SAMPLING, *LONG[1:], extras()),
    "restyle": command(fixed("restyle"), choice(["{in:one-frame .gif}", "{in:odd-sized 17x13 .mp4}"]
                                                + [f"{{in:{d}}}" for d in DAMAGED]),
                       choice(PROMPTS), must("-o", OUTPUTS[:5], OUTPUTS[5:]), must("--model", MODELS[:1], MODELS[3:]),
                       opt("--strength", ["0", "0.5", "1"], BAD_FLOAT), opt("--flow-steps", ["0", "1"], BAD_FLOAT),
                       opt("--flow-strength", ["0.3"], BAD_FLOAT), flag("--no-flow"), flag("--pixel-fusion"),
                       must("--max-frames", ["2", "3"], BAD_INT), opt("--stride", ["2"], BAD_INT),
                       opt("--start", ["1"], BAD_INT + ["100"]), opt("--frames", [], ["3"]),
                       opt("--context-length", ["2"], BAD_INT), *SAMPLING, extras()),
    "info": command(fixed("info"), st.sampled_from([[], ["{MODEL}"], ["{MODEL}"], ["{W}"], ["{W}/file.txt"], ["{W}/no"]]),
                    opt("--frames", ["8", "1000000"], BAD_FRAMES), opt("--height", ["64"], BAD_SIZE),
                    opt("--width", ["64"], BAD_SIZE), flag("--json"), extras()),
    "init": command(fixed("init"), choice(["{W}/newmodel", "{W}/deep/er/model", "{W}/emptydir", "{W}/copy", "{W}/dir.mp4",
                                           "{W}/file.txt", "{W}/existing.mp4", "{W}", "/proc/kinema-model", "{W}/ro/m"]),
                    must("--preset", ["tiny"], ["huge", ""]), opt("--seed", ["3"], BAD_INT), flag("--overwrite"), extras()),
    # train is only ever given bad configs: a valid one would start training
    "train": command(fixed("train"), choice(["{W}/unknown.yaml", "{W}/python.yaml", "{W}/latin1.yaml", "{W}/list.yaml",
                                             "{W}/types.yaml", "{W}/nested.yaml", "{W}/intkey.yaml", "{W}/tabs.yaml",
                                             "{W}/dir.mp4", "{W}/absent.yaml", "{W}/existing.mp4"]),
                     must("--model", MODELS[:1], MODELS[3:]), opt("--run", ["{W}/run"], ["{W}/file.txt"]),
                     opt("--stages", ["vae"], ["all-of-it"]), extras()),
    # eval never gets a runnable --suite: with --suite it always has a bad model or videos too
    "eval": command(fixed("eval"), st.lists(st.sampled_from(["{in:one-frame .gif}", "{in:folder of 3 frames}"]
                                                           + [f"{{in:{d}}}" for d in DAMAGED]), max_size=3),
                    opt("--caption", [PROMPT], ["a purple dodecahedron", "", "\udcff"]),
                    opt("--suite", [], ["world", "vae", "all"]), opt("--model", [], MODELS[3:]),
                    opt("--json-out", ["{W}/scores.json"], ["{W}/scores.txt", "{W}/missing/s.json", "{W}/dir.mp4"]),
                    opt("--per-combo", [], BAD_INT), opt("--steps", [], BAD_STEPS), opt("--guidance", [], BAD_FLOAT),
                    extras()),
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
    print("FUZZ", cmd, result.code, result.err.strip()[-150:].replace("\n", " | "))
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
