"""The page's inputs driven with generated values, as tests/robustness/test_cli_fuzz.py drives the CLI's.

Each example calls a tab's event function (what the Run button and the API name call) with every field
valid, or left at the page's default, except at most two drawn from bad values: damaged uploads, paths
outside the upload area, numbers out of range or of the wrong type, unknown choices, non-UTF-8 text. Each
ends in a clip, its GIF and sidecar, or in one `gr.Error` line with nothing written; never in another
exception.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

gr = pytest.importorskip("gradio", reason="the web UI needs gradio: pip install 'kinema[ui]'")

from kinema.models.family import describe  # noqa: E402
from kinema.ui import forms  # noqa: E402
from kinema.ui.app import handler  # noqa: E402
from kinema.ui.runner import Runner  # noqa: E402

FUZZ = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
PROMPT = "a red circle moving right on a blue background"
NAN, INF = float("nan"), float("inf")
BAD_INT = [0, -1, 2.5, 1e12, NAN, INF, "abc", "", True, [3], {"x": 1}]
BAD_FLOAT = [NAN, -INF, INF, 1e308, -1, "abc", "1,5", True]
DAMAGED = [*(f"{{in:{name}}}" for name in ("zero-byte .png", "text named .mp4", "truncated .mp4 (50%)", "header-only header.png",
                                            "declared size huge.png", "unknown extension", "empty folder")),
           "{outside}", "/etc/passwd", "{upload}/../escape.png"]

# field -> (good values, bad values); a required field (no default cheap enough) is never left out
FIELDS = {
    "prompt": ([PROMPT], ["", "   ", "x" * 10_001, "a red circle \udcff", None, 5]),
    "negative_prompt": (["", "blurry"], ["\udcff", "x" * 10_001, 3]),
    "frames": ([1, 2, 3], [*BAD_INT, None]),
    "height": ([16], [0, 15, 17, -16, 1e9, "abc", None]),
    "width": ([16, 32], [0, 15, 17, "16.5", None]),
    "steps": ([1, 2], [0, 1001, 1e12, NAN, None]),
    "guidance": ([1, 3.5], BAD_FLOAT),
    "seed": ([0, 7], [-1, 2.5, 2**64, "seven"]),
    "random_seed": ([False, True], ["yes", None]),
    "fps": ([None, "", 8, "0.5"], ["0.001", 241, "nan", "x"]),
    "scheduler": (["euler", "unipc"], ["ddim", "", None]),
    "shift": ([None, 3], ["-1", "0", "inf"]),
    "motion_length": ([None, ""], ["0", "abc", "2.5"]),
    "fast": (["auto", "off"], ["on", True, "yes"]),  # the tiny model ships no student: --fast is refused
    "quantize": (["none", "int8"], ["fp8", "nf4", "int4", "", None]),  # fp8, nf4: CUDA only
    "compile": ([False], ["yes", None, 1]),  # on, inductor builds kernels for minutes: tests/test_compile.py runs it
    "cache": (["", "none", "first-block:0.5", "taylorseer:2"], ["magic", "first-block:2", "taylorseer:0", "\udcff"]),
    "mode": (["window", "continue"], ["both"]),
    "context_length": ([None, 2], ["0", "65", "x"]),
    "context_stride": ([None, 1], ["0", "-1"]),
    "window_weights": (["pyramid", "flat"], ["cubic"]),
    "follow_motion": (["auto", "off"], ["maybe", True, ["on"]]),
    "prompt_schedule": (["", "0:a red circle|1:a blue square"], ["1:a", "0:a|0:b", "x", "0:", "0:a|99999:b"]),
    "prompt_transition": ([0, 1], [-1, 1.5]),
    "adain": ([False, True], ["no"]),
    "resize": (["crop", "pad"], ["zoom", None, ["crop"]]),
    "image_noise": ([None, "0", "0.1"], ["nan", "-1"]),
    "strength": ([0, 0.5, 1], BAD_FLOAT + [2]),
    "structure": ([0, None], [-1, NAN]),
    "method": (["sdedit", "flowedit"], ["pnp", "", None]),
    "source_prompt": (["", "a red circle"], ["\udcff", "x" * 10_001, 3]),
    "n_avg": ([None, ""], ["0", "x", 1.5]),
    "tail": ([0], [1, -0.1, NAN]),
    "flow": ([True, False], ["off"]),
    "flow_strength": ([0.3], BAD_FLOAT),
    "flow_steps": ([0, 1], [2, NAN]),
    "pixel_fusion": (["auto", "on", "off"], ["yes"]),
    "max_frames": ([None, "2", "3"], ["0", "-1", "x"]),
    "stride": ([1, 2], [0, -2, 1.5]),
    "start": ([0, 1], [-1, 100]),
    "control_scale": ([None, ""], ["9", "nan", "x", "-1", "1"]),  # the tiny model has no control input: any scale is refused
}
CONTROL_CLIP = ([None], [*DAMAGED[:3], "{in:one-frame .gif}"])  # a good clip too: this model reads no control
INPUT_FIELDS = {
    "generate": {"control": CONTROL_CLIP},
    "animate": {"image": (["{in:RGBA}", "{in:CMYK jpeg}", "{in:16-bit grey}"], [*DAMAGED, None]),
                "last_image": ([None], ["{in:grey L}", *DAMAGED[:3], DAMAGED[-1]]), "control": CONTROL_CLIP},
    "restyle": {"video": (["{in:one-frame .gif}", "{in:odd-sized 17x13 .mp4}", "{in:variable-frame-rate .gif}"], DAMAGED),
                "control": (["auto", "none"], ["edges", "depth", 3])},
    "extend": {"video": (["{in:one-frame .mp4}"], DAMAGED),
               "frames": ([6, 8], [0, 1, 3, None]), "context_length": (["2"], ["0", "x"])},
}
REQUIRED = {"prompt", "height", "width", "steps", "frames", "image", "video", "max_frames", "context_length"}


def robustness_conftest():
    path = Path(__file__).parent / "robustness" / "conftest.py"
    spec = importlib.util.spec_from_file_location("kinema_robustness_conftest", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    """(uploaded files by name, the upload area, the output folder, a runner)."""
    root = tmp_path_factory.mktemp("fuzz")
    images, videos = robustness_conftest().build_inputs(root / "uploads")
    (root / "escape.png").write_bytes((root / "uploads" / "good.png").read_bytes())
    (root / "out").mkdir()
    runner = Runner(describe(tiny_model_dir), root / "out", str(tiny_model_dir), dict(device="cpu", dtype="float32", threads=1),
                    (root / "uploads",))
    return {**images, **videos}, root, runner


@st.composite
def form(draw, task: str):
    """A tab's values: each valid or left at the page's default, at most two drawn from bad values."""
    fields = [n for n in forms.names(task)]
    table = {**FIELDS, **INPUT_FIELDS.get(task, {})}
    broken = draw(st.sets(st.sampled_from(fields), max_size=2))
    values = {}
    for name in fields:
        good, bad = table[name]
        if name in broken and bad:
            values[name] = draw(st.sampled_from(bad))
        elif name in REQUIRED or draw(st.booleans()):
            values[name] = draw(st.sampled_from(good))
    return values


def fill(value, inputs: dict, root: Path):
    if isinstance(value, str) and value.startswith("{in:"):
        return str(inputs[value[4:-1]])
    if isinstance(value, str) and value.startswith(("{outside}", "{upload}")):
        return value.replace("{outside}", str(root / "escape.png")).replace("{upload}", str(root / "uploads"))
    return value


def check(task: str, drawn: dict, setup) -> str:
    inputs, root, runner = setup
    page = forms.defaults(task, runner.info)
    values = {**page, **{k: fill(v, inputs, root) for k, v in drawn.items()}}
    before = set((root / "out").iterdir())
    fn = handler(task, runner)
    try:
        clip, gif, record, command = fn(*[values[n] for n in forms.names(task)], None, None)
    except gr.Error as e:
        message = str(e.message)
        assert message.strip() and "\n" not in message and "Traceback" not in message, message
        assert set((root / "out").iterdir()) == before, "a refused job left files"
        return "refused"
    added = {p.name for p in set((root / "out").iterdir()) - before}
    assert added == {Path(clip).name, Path(clip).name + ".json", Path(gif).name}
    assert record["command"] == task and command.startswith(f"kinema {task} ")
    return "made"


@pytest.mark.parametrize("task", list(forms.FORMS))
def test_form(task, setup):
    outcomes = []

    @FUZZ
    @given(drawn=form(task))
    def fuzz(drawn):
        outcomes.append(check(task, drawn, setup))

    fuzz()
    assert {"made", "refused"} <= set(outcomes), outcomes  # both ends were reached
