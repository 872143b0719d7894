"""kinema serve without a browser: arguments refused before serving, the forms, the runner (progress, Stop,
uploads, the command that remakes a clip) and the history, in-process on the tiny model."""

from __future__ import annotations

import json
import shlex
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio", reason="the web UI needs gradio: pip install 'kinema[ui]'")

from kinema import video_io  # noqa: E402
from kinema.cli import build_parser, main  # noqa: E402
from kinema.errors import KinemaError  # noqa: E402
from kinema.models.family import describe  # noqa: E402
from kinema.ui import forms, history  # noqa: E402
from kinema.ui.runner import Runner, Stopped  # noqa: E402

PROMPT = "a red circle moving right on a blue background"
CHEAP = dict(frames=3, height=16, width=16, steps=2)


def run_cli(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and ": error: " in lines[0] and "Traceback" not in err, err
    return lines[0]


#################################################################################
#                          Bad arguments, before serving                        #
#################################################################################


@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("auth", ["nocolon", ":hunter2", "me:", "", " me:hunter2", "me:hun\nter2"])
def test_malformed_auth_is_one_line_and_hides_the_password(capsys, tmp_path, auth):
    code, err = run_cli(capsys, "serve", "--auth", auth, "--output-dir", tmp_path / "out")
    line = one_error_line(err)
    assert code == 2 and "--auth must be USER:PASS" in line and "hunter2" not in line and "hun" not in line
    assert not (tmp_path / "out").exists()


def test_port_in_use_is_one_line(capsys, tmp_path, busy_port):
    code, err = run_cli(capsys, "serve", "--port", busy_port, "--output-dir", tmp_path / "out")
    assert code == 2 and f"port {busy_port} on 127.0.0.1 is in use" in one_error_line(err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("sub", ["file.txt/out", "file.txt", "/proc/kinema-ui-out"])
def test_unwritable_output_dir_is_one_line(capsys, tmp_path, sub):
    (tmp_path / "file.txt").write_text("x")
    target = sub if sub.startswith("/") else tmp_path / sub
    code, err = run_cli(capsys, "serve", "--output-dir", target)
    assert code == 2 and "--output-dir" in one_error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


@pytest.mark.parametrize("argv", [["--port", "0"], ["--port", "70000"], ["--port", "http"], ["--max-queue", "0"],
                                  ["--host", "no-such-host.invalid"], ["--model", "{W}/file.txt"], ["--device", "tpu"]])
def test_other_bad_arguments_end_before_serving(capsys, tmp_path, argv):
    (tmp_path / "file.txt").write_text("x")
    code, err = run_cli(capsys, "serve", "--output-dir", tmp_path / "out", *[a.replace("{W}", str(tmp_path)) for a in argv])
    assert code == 2 and one_error_line(err)
    assert not (tmp_path / "out").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_launch_is_local_without_share_and_warns_on_another_host(capsys, tmp_path, monkeypatch, tiny_model_dir):
    """What reaches Gradio's launch: loopback by default, never a share tunnel, uploads capped, files only from --output-dir."""
    import gradio as gr

    port = free_port()
    calls = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: calls.append(kw))
    code, err = run_cli(capsys, "serve", "--model", tiny_model_dir, "--output-dir", tmp_path / "a", "--port", port)
    assert code == 0 and "warning" not in err
    kw = calls[-1]
    assert kw["server_name"] == "127.0.0.1" and kw["share"] is False and kw["auth"] is None
    assert kw["allowed_paths"] == [str((tmp_path / "a").resolve())] and kw["max_file_size"]
    code, err = run_cli(capsys, "serve", "--model", tiny_model_dir, "--output-dir", tmp_path / "b", "--host", "0.0.0.0", "--port", port)
    assert code == 0 and "kinema: warning: serving on 0.0.0.0 without --auth" in err
    code, err = run_cli(capsys, "serve", "--model", tiny_model_dir, "--output-dir", tmp_path / "c", "--host", "0.0.0.0",
                        "--auth", "me:pw", "--port", port)
    assert code == 0 and "warning" not in err and calls[-1]["auth"] == ("me", "pw") and calls[-1]["share"] is False


#################################################################################
#                                     Forms                                     #
#################################################################################


@pytest.mark.parametrize("task", list(forms.FORMS))
def test_every_field_is_an_option_of_the_command(task):
    cli = forms.cli_defaults(task)
    for name in forms.names(task):
        assert name in cli or name in ("image", "video", "random_seed"), name


@pytest.mark.parametrize("task", list(forms.FORMS))
def test_the_command_parses_back_to_the_same_options(task, tiny_model_dir):
    info = describe(tiny_model_dir)
    values = {**forms.defaults(task, info), "prompt": "-a prompt that 'looks' like an option", "seed": 7}
    values.update({k: v for k, v in dict(stride=2, flow=False, adain=True, mode="continue", follow_motion="off",
                                         context_length=3, pixel_fusion="on").items() if k in values})
    parsed = forms.parse(task, values)
    parsed.pop("random_seed")
    inputs, prompt, options = forms.split(task, parsed)
    inputs = ["in.png"] * len(inputs)
    line = forms.command(task, inputs, prompt, options, "out.mp4")
    ns = vars(build_parser().parse_args(shlex.split(line)[1:]))
    assert ns["prompt"] == prompt and ns["output"] == "out.mp4"
    assert {k: ns[k] for k in options} == options
    task_back, back = forms.from_command(line)
    assert task_back == task and back["prompt"] == prompt and back["seed"] == 7


def test_defaults_come_from_the_model_folder(tiny_model_dir):
    d = describe(tiny_model_dir).defaults
    g = forms.defaults("generate", describe(tiny_model_dir))
    assert (g["frames"], g["height"], g["width"], g["steps"], g["guidance"]) == (d.frames, d.height, d.width, d.steps, d.guidance)
    r = forms.defaults("restyle", describe(tiny_model_dir))
    assert r["strength"] == d.restyle_strength and r["fps"] is None and "frames" not in r


@pytest.mark.parametrize("field, value, message", [("frames", 2.5, "--frames must be a whole number"),
                                                   ("steps", None, "--steps is empty"),
                                                   ("guidance", float("nan"), "--guidance must be a finite number"),
                                                   ("scheduler", "lcm", "unknown --scheduler 'lcm'"),  # ddim: a name, for epsilon models
                                                   ("motion_length", "ten", "--motion-length must be a number"),
                                                   ("random_seed", "yes", "--random-seed must be true or false"),
                                                   ("follow_motion", ["on"], "--follow-motion must be one of auto, on, off"),
                                                   ("mode", {"a": 1}, "unknown --mode")])
def test_a_bad_value_is_named_by_its_flag(field, value, message):
    with pytest.raises(KinemaError, match=message):
        forms.parse("generate", {field: value})


def test_a_missing_upload_is_named():
    with pytest.raises(KinemaError, match="no source clip: upload one"):
        forms.parse("restyle", {"video": None})
    assert forms.parse("animate", {"last_image": None}) == {"last_image": None}


#################################################################################
#                                    Runner                                     #
#################################################################################


@pytest.fixture
def runner(tmp_path, tiny_model_dir):
    (tmp_path / "uploads").mkdir()
    (tmp_path / "out").mkdir()  # as kinema serve makes it
    return Runner(describe(tiny_model_dir), tmp_path / "out", str(tiny_model_dir), dict(device="cpu", dtype="float32"),
                  (tmp_path / "uploads",))


def test_a_job_reports_every_step_and_writes_clip_gif_and_sidecar(runner, capsys, tmp_path):
    seen = []
    out = runner.run("generate", {"prompt": PROMPT, **CHEAP, "seed": 5}, "s1", lambda *a: seen.append(a))
    assert [s[:2] for s in seen] == [(0, 2), (1, 2), (2, 2)]
    frames, _ = video_io.read_video(out.clip)
    assert frames.shape == (3, 16, 16, 3) and len(video_io.read_video(out.gif)[0]) >= 1
    assert out.record["seed"] == 5 and out.record["cli"] == out.command and out.sidecar.is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([out.clip.name, out.gif.name, out.sidecar.name])

    # the command shown makes the same clip
    words = shlex.split(out.command)
    words[words.index("-o") + 1] = str(tmp_path / "again.mp4")
    code, err = run_cli(capsys, *words[1:], "--device", "cpu", "--dtype", "float32", "--quiet")
    assert code == 0, err
    again, _ = video_io.read_video(tmp_path / "again.mp4")
    assert np.abs(again.astype(int) - frames.astype(int)).max() <= 2


def test_stop_ends_the_job_within_a_step_and_leaves_no_file(runner, tmp_path):
    steps = []

    def progress(step, total, desc):
        steps.append(step)
        if step == 1:
            assert runner.stop("me") and not runner.stop("someone else")

    with pytest.raises(Stopped, match="stopped; nothing was written"):
        runner.run("generate", {"prompt": PROMPT, **CHEAP, "steps": 50}, "me", progress)
    assert steps == [0, 1] and list((tmp_path / "out").iterdir()) == []
    assert not runner.stop("me")  # nothing runs any more


def test_one_job_at_a_time(runner, tmp_path):
    active, most = [0], [0]
    lock = threading.Lock()

    def progress(step, total, desc):  # "starting" or "loading the model" (the job has the device) .. the last step
        with lock:
            active[0] += desc in ("starting", "loading the model")
            most[0] = max(most[0], active[0])
        time.sleep(0.01)
        with lock:
            active[0] -= step == total and desc == "denoise"

    threads = [threading.Thread(target=runner.run, args=("generate", {"prompt": PROMPT, **CHEAP, "seed": s}, str(s), progress))
               for s in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert most[0] == 1 and len(list((tmp_path / "out").glob("*.mp4"))) == 2


def test_waiting_jobs_are_told_their_place_bounded_and_stoppable(runner, tmp_path):
    runner.max_queue = 1
    running, release, told = threading.Event(), threading.Event(), []
    outcomes = {}

    def hold(step, total, desc):  # the first job holds the device until released
        if step == 1:
            running.set()
            release.wait(30)

    def job(name, progress):
        try:
            outcomes[name] = runner.run("generate", {"prompt": PROMPT, **CHEAP}, name, progress)
        except KinemaError as e:
            outcomes[name] = str(e)

    first = threading.Thread(target=job, args=("a", hold))
    first.start()
    assert running.wait(30)
    second = threading.Thread(target=job, args=("b", lambda *a: told.append(a[2])))
    second.start()
    for _ in range(300):
        if told:
            break
        time.sleep(0.01)
    job("c", None)  # one waits already: refused at once
    assert runner.stop("b")
    second.join(30)
    release.set()
    first.join(30)
    assert told == ["queue: 1 job ahead"]
    assert outcomes["c"] == "the queue is full (1 waiting); try again when a job has finished"
    assert outcomes["b"] == "stopped while waiting; nothing was written"
    assert outcomes["a"].clip.is_file() and len(list((tmp_path / "out").glob("*.mp4"))) == 1


def test_a_path_outside_the_upload_area_is_never_opened(runner, tmp_path):
    from PIL import Image

    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(secret)
    video_io.write_video(tmp_path / "secret", np.zeros((1, 8, 8, 3), np.uint8), 8)  # a PNG folder
    for path in (str(secret), str(tmp_path / "uploads" / ".." / "secret.png"), "/etc/passwd"):
        with pytest.raises(KinemaError, match="is not an uploaded file; upload it in the page"):
            runner.run("animate", {"image": path, "prompt": PROMPT, **CHEAP})
    with pytest.raises(KinemaError, match="is not an uploaded file"):
        runner.run("restyle", {"video": str(tmp_path / "secret"), "prompt": PROMPT})


def test_a_bad_upload_gets_the_cli_message_with_its_name(runner, tmp_path, capsys):
    bad = tmp_path / "uploads" / "abc123" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(KinemaError) as e:
        runner.run("animate", {"image": str(bad), "prompt": PROMPT, **CHEAP})
    code, err = run_cli(capsys, "animate", bad, PROMPT, "-o", tmp_path / "x.mp4")
    assert code == 2 and one_error_line(err) == "kinema: error: " + str(e.value).replace("broken.png", str(bad))
    assert str(bad.parent) not in str(e.value)


def test_the_page_has_a_tab_and_an_api_name_per_task_the_model_can_run(runner, tiny_model_dir):
    import dataclasses

    from kinema.ui.app import build

    def api_names(info):
        runner.info = info
        return sorted(f.api_name for f in build(runner, info).fns.values() if f.api_name and f.api_visibility == "public")

    info = describe(tiny_model_dir)
    assert api_names(info) == ["animate", "extend", "generate", "restyle", "stop"]
    assert api_names(dataclasses.replace(info, tasks=("animate",))) == ["animate", "stop"]  # as a Wan I2V folder


#################################################################################
#                                    History                                    #
#################################################################################


def test_history_lists_sidecars_newest_first_and_loads_settings_back(runner, tmp_path):
    out = tmp_path / "out"
    first = runner.run("generate", {"prompt": PROMPT, **CHEAP, "seed": 1, "guidance": 2.5})
    time.sleep(0.02)
    second = runner.run("generate", {"prompt": "a blue square", **CHEAP, "seed": 2})
    cli_made = out / "cli.mp4"  # a clip the CLI wrote: no recorded command, settings only
    video_io.write_video(cli_made, np.zeros((2, 16, 16, 3), np.uint8), 8)
    (out / "cli.mp4.json").write_text(json.dumps(dict(command="animate", prompt="p", settings=dict(frames=2, steps=3, seed=9),
                                                     resize="pad")))
    (out / "orphan.mp4.json").write_text("{}")  # no clip
    (out / "notes.json").write_text("not json")
    (out / "link.mp4").symlink_to(first.clip)
    (out / "link.mp4.json").symlink_to(first.sidecar)
    names = [e.clip.name for e in history.entries(out)]
    assert names[:2] == ["cli.mp4", second.clip.name] and first.clip.name in names and len(names) == 3
    task, values = history.form_values(json.loads(first.sidecar.read_text()))
    assert task == "generate" and values["prompt"] == PROMPT and values["seed"] == 1 and values["guidance"] == 2.5
    assert values["frames"] == 3 and values["random_seed"] is False
    task, values = history.form_values(json.loads((out / "cli.mp4.json").read_text()))
    assert task == "animate" and values == {"prompt": "p", "random_seed": False, "frames": 2, "steps": 3, "seed": 9,
                                            "resize": "pad"}
