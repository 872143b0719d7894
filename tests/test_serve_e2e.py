"""kinema serve end to end: a served tiny model called through gradio_client, and driven in a real headless
Chromium (Debian's `chromium`, through Playwright's Python API; `.ci/run` installs it where it can)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio", reason="the web UI needs gradio: pip install 'kinema[ui]'")
gradio_client = pytest.importorskip("gradio_client", reason="pip install 'kinema[test]'")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from gradio_client.utils import Status  # noqa: E402

from kinema import video_io  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a red circle moving right on a blue background"
CHEAP = dict(height=32, width=32, steps=2)


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    """`kinema serve` on the tiny model, in its own process: (url, output folder)."""
    out = tmp_path_factory.mktemp("served") / "clips"
    proc, url = load_script("ui_screenshots").serve(str(tiny_model_dir), str(out), "--device", "cpu", "--dtype", "float32",
                                                    "--threads", "1", "--max-queue", "4")
    yield url, out
    proc.kill()  # nothing to save: the clips are the test's
    proc.wait()


@pytest.fixture(scope="module")
def client(served):
    return Client(served[0], verbose=False)


def clip_of(result) -> Path:
    video = result[0]["video"] if isinstance(result[0], dict) else result[0]
    return Path(video)


def listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
    root = tmp_path_factory.mktemp("uploads")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    from PIL import Image

    Image.fromarray(frames[0]).save(root / "anchor.png")
    video_io.write_video(root / "source.mp4", frames, 8)
    (root / "broken.mp4").write_bytes(b"this is not a video\n" * 20)
    return root


def test_each_api_name_returns_a_playable_clip_with_the_frames_asked_for(client, served, uploads):
    calls = {"generate": dict(prompt=PROMPT, frames=5), "animate": dict(image=handle_file(uploads / "anchor.png"), prompt=PROMPT, frames=3),
             "restyle": dict(video=handle_file(uploads / "source.mp4"), prompt=PROMPT, max_frames=3, strength=0.5),
             "extend": dict(video=handle_file(uploads / "source.mp4"), prompt=PROMPT, frames=7, context_length=2)}
    for task, options in calls.items():
        result = client.predict(**options, **CHEAP, api_name=f"/{task}")
        frames, fps = video_io.read_video(clip_of(result))  # H.264 mp4, decoded
        expected = options.get("frames") or options.get("max_frames")
        assert frames.shape == (expected, 32, 32, 3), task
        gif, sidecar, command = result[1], result[2], result[3]
        assert Path(gif).suffix == ".gif" and sidecar["command"] == task and sidecar["frames_written"] == expected
        assert command.startswith(f"kinema {task} ") and sidecar["cli"] == command
        assert (served[1] / (Path(command.split(" -o ")[1].split()[0]).name)).is_file()  # written in --output-dir


def test_a_bad_upload_gets_the_cli_error(client, uploads, tmp_path, capsys):
    from kinema.cli import main

    with pytest.raises(AppError) as e:
        client.predict(video=handle_file(uploads / "broken.mp4"), prompt=PROMPT, api_name="/restyle")
    shutil.copy(uploads / "broken.mp4", tmp_path / "broken.mp4")
    capsys.readouterr()
    assert main(["restyle", str(tmp_path / "broken.mp4"), PROMPT, "-o", str(tmp_path / "x.mp4")]) == 2
    cli = capsys.readouterr().err.strip().removeprefix("kinema: error: ")
    assert str(e.value) == cli.replace(str(tmp_path / "broken.mp4"), "broken.mp4")
    with pytest.raises(AppError, match="Invalid file type"):  # not a type the page takes
        client.predict(image=handle_file(uploads / "source.mp4"), prompt=PROMPT, api_name="/animate")


def test_stop_cancels_a_running_job_and_leaves_no_file(client, served):
    before = listing(served[1])
    job = client.submit(prompt=PROMPT, frames=3, **{**CHEAP, "steps": 1000}, api_name="/generate")
    wait_until_running(job)
    t0 = time.monotonic()
    client.predict(api_name="/stop")
    with pytest.raises(AppError, match="stopped; nothing was written"):
        job.result(timeout=60)
    assert time.monotonic() - t0 < 10
    assert listing(served[1]) == before


def test_the_server_gives_no_file_from_outside_its_output_folder(served, tiny_model_dir):
    import urllib.error
    import urllib.request

    url, out = served

    def status(path) -> int:
        try:
            with urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    clips = sorted(out.glob("*.gif"))
    assert clips and status(clips[0]) == 200
    for path in ("/etc/passwd", ROOT / "README.md", "README.md", tiny_model_dir / "kinema.json", out / ".." / "x",
                 out.parent):
        assert status(path) in (403, 404), path


def wait_until_running(job, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        status = job.status()
        if status.code == Status.PROGRESS and status.progress_data and status.progress_data[0].index >= 1:
            return
        time.sleep(0.05)
    raise TimeoutError("the job did not start")


def test_the_queue_is_bounded_and_tells_each_job_its_place(client, served):
    """--max-queue 4: behind a running job four wait, each told its place; the rest are refused. Stop stops the
    jobs of its own page (session) only."""
    other = Client(served[0], verbose=False)
    blocker = other.submit(prompt=PROMPT, frames=1, **{**CHEAP, "steps": 1000}, api_name="/generate")
    wait_until_running(blocker)
    waiting = []
    for seed in range(6):
        waiting.append(client.submit(prompt=PROMPT, frames=1, height=16, width=16, steps=1, seed=seed, api_name="/generate"))
        time.sleep(0.3)  # in order
    places = []
    for job in waiting[:4]:
        status = job.status()
        places.append(status.progress_data[0].desc if status.progress_data else str(status.code))
    other.predict(api_name="/stop")
    outcomes = []
    for job in waiting:
        try:
            outcomes.append(len(video_io.read_video(clip_of(job.result(timeout=120)))[0]))
        except AppError as e:
            outcomes.append(str(e))
    assert places == ["queue: 1 job ahead", "queue: 2 jobs ahead", "queue: 3 jobs ahead", "queue: 4 jobs ahead"]
    assert outcomes == [1, 1, 1, 1] + ["the queue is full (4 waiting); try again when a job has finished"] * 2
    with pytest.raises(AppError, match="stopped; nothing was written"):
        blocker.result(timeout=60)


def test_two_clients_both_get_their_own_results(served):
    results = {}

    def call(seed: int, frames: int):
        results[seed] = Client(served[0], verbose=False).predict(prompt=PROMPT, frames=frames, seed=seed, **CHEAP,
                                                                 api_name="/generate")

    threads = [threading.Thread(target=call, args=a) for a in ((11, 4), (12, 6))]
    [t.start() for t in threads]
    [t.join(timeout=120) for t in threads]
    assert set(results) == {11, 12}
    for seed, frames in ((11, 4), (12, 6)):
        assert results[seed][2]["seed"] == seed and len(video_io.read_video(clip_of(results[seed]))[0]) == frames


def test_the_client_example_script_runs(served, tmp_path):
    made = load_script("ui_client_example").main(["--url", served[0], "--out", str(tmp_path), "--steps", "1", "--size", "32"])
    assert sorted(made) == ["animate", "extend", "generate", "restyle"]
    assert all(len(video_io.read_video(p)[0]) >= 9 for p in made.values())


#################################################################################
#                                In a real browser                              #
#################################################################################


def test_in_chromium_a_typed_prompt_plays_stops_and_loads_back_from_history(served, tmp_path):
    shots = load_script("ui_screenshots")
    if not Path(shots.CHROMIUM).is_file():
        pytest.skip(f"no {shots.CHROMIUM}: apt-get install chromium (.ci/run does it as root)")
    pytest.importorskip("playwright", reason="pip install 'kinema[test]'")
    seen = shots.shoot(served[0], tmp_path, steps=2, frames=4, prompt="a yellow square moving up on a black background")
    played = seen["played"]
    assert played["time"] > 0 and not played["paused"] and played["width"] == 64
    assert seen["loaded_prompt"] == "a yellow square moving up on a black background" and seen["loaded_steps"] == "2"
    assert sorted(Path(p).name for p in seen["screenshots"]) == sorted([*(f"{t.lower()}.png" for t in shots.TABS), "running.png"])
    sidecars = [json.loads(p.read_text()) for p in served[1].glob("*.json")]
    mine = [s for s in sidecars if s["prompt"] == "a yellow square moving up on a black background"]
    assert [s["frames_written"] for s in mine] == [4]  # the stopped job wrote nothing
    assert seen["stopped"] == "stopped; nothing was written"
