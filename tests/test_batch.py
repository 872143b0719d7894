"""kinema batch: jobs files read and checked before any model loads, idempotent reruns, failures recorded, ranks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from kinema import video_io
from kinema.cli import main

CHEAP = dict(frames=2, steps=1, height=16, width=16)


def job(i: int, model: Path, **over) -> dict:
    """A cheap generate job of the tiny model."""
    return {**dict(command="generate", prompt=f"a red circle moving right {i}", model=str(model), seed=i, **CHEAP), **over}


def write_jsonl(path: Path, jobs: list) -> Path:
    path.write_text("".join((j if isinstance(j, str) else json.dumps(j)) + "\n" for j in jobs))
    return path


@pytest.fixture
def kinema(capsys, monkeypatch, tmp_path):
    """`kinema ARGV` in-process, in tmp_path: (exit status, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)

    def run(*argv):
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


#################################################################################
#                        Reading, templates and bad jobs                        #
#################################################################################


def test_three_formats_give_the_same_plan(tiny_model_dir, tmp_path, kinema):
    jobs = [job(i, tiny_model_dir) for i in range(3)]
    write_jsonl(tmp_path / "a.jsonl", ["# a comment", *jobs[:2], "", jobs[2]])
    text = "# sweep\n" + yaml.safe_dump(jobs, sort_keys=False)
    (tmp_path / "a.yaml").write_text(text)
    keys = list(jobs[0])
    rows = [",".join(keys)] + [",".join(f'"{j[k]}"' for k in keys) for j in jobs]
    (tmp_path / "a.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "out").mkdir()
    plans = {}
    for name in ("a.jsonl", "a.yaml", "a.csv"):
        code, out, err = kinema("batch", name, "--dry-run", "-o", "out/{index:03d}-{seed}.mp4")
        assert code == 0, err
        plans[name] = [line.split() for line in out.splitlines()]
    assert [p[4] for p in plans["a.jsonl"]] == [str(tmp_path / f"out/{i:03d}-{i}.mp4") for i in range(3)]
    assert [p[1] for p in plans["a.jsonl"]] == ["2", "3", "5"]  # file lines, comments and blanks counted
    assert [p[1] for p in plans["a.yaml"]] == [str(n) for n, line in enumerate(text.splitlines(), 1) if line.startswith("- ")]
    assert [p[1] for p in plans["a.csv"]] == ["2", "3", "4"]
    assert [p[2:] for p in plans["a.yaml"]] == [p[2:] for p in plans["a.jsonl"]] == [p[2:] for p in plans["a.csv"]]
    assert not list((tmp_path / "out").iterdir()) and not (tmp_path / "a.results.jsonl").exists()


def test_csv_line_numbers_count_quoted_newlines(tiny_model_dir, tmp_path, kinema):
    (tmp_path / "j.csv").write_text(f'command,prompt,model,frames,steps,height,width,output\n'
                                    f'generate,"a red\ncircle",{tiny_model_dir},2,1,16,16,a.mp4\n'
                                    f'generate,a blue square,{tiny_model_dir},0,1,16,16,b.mp4\n')
    code, out, err = kinema("batch", "j.csv")
    assert code == 2 and "j.csv:4: argument --frames: must be >= 1, got 0" in err


BAD = [  # (job, what the one-line error says)
    (dict(command="paint"), "unknown command 'paint'"),
    (dict(command=None), "names no command"),
    (dict(bogus=1), "unknown option 'bogus' for generate"),
    (dict(seed=[1, 2]), "seed must be a number or text"),
    (dict(overwrite="maybe"), "overwrite is a switch"),
    (dict(steps=True), "steps takes a value"),
    (dict(frames=0), "argument --frames: must be >= 1"),
    (dict(guidance=float("nan")), "argument --guidance: must be a finite number"),
    (dict(output="clip.avi"), "unsupported output extension"),
    (dict(output="missing/clip.mp4"), "does not exist; create it first"),
    (dict(output="out/{seed}.mp4"), "does not vary with the job's index"),
    (dict(output="out/{colour}-{index}.mp4"), "names {colour}"),
    (dict(output="out/{index:q}.mp4"), "cannot be filled in"),
    (dict(command="animate", image="absent.png"), "absent.png"),
    (dict(command="restyle", video="absent.mp4", frames=None), "absent.mp4"),
]


@pytest.mark.parametrize("bad,message", BAD, ids=[m for _, m in BAD])
def test_a_bad_job_is_reported_with_its_line_before_any_work(bad, message, tiny_model_dir, tmp_path, kinema, monkeypatch):
    from kinema import jobs

    monkeypatch.setattr(jobs, "load", lambda *a: pytest.fail("a model was loaded"))
    (tmp_path / "out").mkdir()
    jl = write_jsonl(tmp_path / "j.jsonl", [job(0, tiny_model_dir, output="out/{index}.mp4"),
                                             {k: v for k, v in {**job(1, tiny_model_dir, output="out/{index}.mp4"), **bad}.items()
                                              if v is not None}])
    before = files(tmp_path)
    code, out, err = kinema("batch", jl)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"kinema: error: {jl}:2: ") and message in err, err
    assert "--skip-invalid" in err and files(tmp_path) == before


def test_jobs_with_the_same_output_are_refused(tiny_model_dir, tmp_path, kinema):
    jl = write_jsonl(tmp_path / "j.jsonl", [job(0, tiny_model_dir, output="a.mp4"), job(1, tiny_model_dir, output="b.mp4"),
                                             job(2, tiny_model_dir, output="./a.mp4")])
    code, _, err = kinema("batch", jl)
    assert code == 2 and f"{jl}:3: output {tmp_path / 'a.mp4'} is also the output of the job at line 1" in err


@pytest.mark.parametrize("text,message", [
    ("", "holds no jobs"), ("\n\n# nothing\n", "holds no jobs"), ("[1, 2]\n", ":1: a job must be a mapping"),
    ('{"command": "generate", \n', ":1: not valid JSON"), ("[" * 100_000 + "\n", "nested too deeply"),
])
def test_bad_jsonl_lines(text, message, tmp_path, kinema):
    (tmp_path / "j.jsonl").write_text(text)
    code, _, err = kinema("batch", "j.jsonl")
    assert code == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("name,data,message", [
    ("j.yaml", b"command: generate\n", "must be a YAML list"),
    ("j.yaml", b"- command: generate\n  prompt: [\n", "j.yaml:3: not valid YAML"),
    ("j.yaml", b"- !!python/object/apply:os.system ['true']\n", "j.yaml:1: not a job"),
    ("j.yaml", b"- 3\n- {command: generate}\n", "j.yaml:1: a job must be a mapping"),
    ("j.csv", b"", "needs a header row"), ("j.csv", b"command,command\ngenerate,generate\n", "appears twice"),
    ("j.csv", b"command,prompt\ngenerate,a,b\n", "j.csv:2: the row has 3 cells"),
    ("j.txt", b"{}", "must end in .jsonl"), ("absent.jsonl", None, "does not exist"), ("dir.jsonl", "dir", "is a folder"),
    ("j.jsonl", "caf\xe9".encode("latin-1"), "as UTF-8 text"), ("j.jsonl", b"{}\x00", "NUL bytes"),
])
def test_bad_files(name, data, message, tmp_path, kinema):
    if data == "dir":
        (tmp_path / name).mkdir()
    elif data is not None:
        (tmp_path / name).write_bytes(data)
    code, _, err = kinema("batch", name)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not list(tmp_path.glob("*.results.jsonl"))


def test_skip_invalid_runs_the_rest_and_records_them(tiny_model_dir, tmp_path, kinema):
    jl = write_jsonl(tmp_path / "j.jsonl", [job(0, tiny_model_dir), "not json", job(2, tiny_model_dir, frames=0),
                                             job(3, tiny_model_dir)])
    code, out, err = kinema("batch", jl, "-o", "{index}.gif", "--skip-invalid", "--quiet")
    assert code == 0, err
    assert "j.jsonl:2: not valid JSON" in err and "j.jsonl:3: argument --frames" in err and "left out" in err
    rows = results(tmp_path / "j.results.jsonl")
    assert [(r["line"], r["status"]) for r in rows] == [(1, "ok"), (2, "invalid"), (3, "invalid"), (4, "ok")]
    assert {p for p in files(tmp_path) if p.endswith(".gif")} == {"0.gif", "3.gif"}
    code, _, err = kinema("batch", write_jsonl(tmp_path / "k.jsonl", ["x", "y"]), "--skip-invalid")
    assert code == 2 and "none of the 2 jobs" in err


#################################################################################
#                         Running, failures, idempotence                        #
#################################################################################


def test_batch_writes_every_output_loads_once_and_reruns_nothing(tiny_model_dir, tmp_path, kinema, monkeypatch):
    """Two models interleaved in the file: each loaded once (jobs sharing a model run together); a rerun skips all."""
    from kinema.models import family

    from kinema import jobs

    other = tmp_path / "tiny2"
    shutil.copytree(tiny_model_dir, other)
    loads = []
    real = family.load_model
    monkeypatch.setattr(jobs, "load_model", lambda info, *a: loads.append(str(info.path)) or real(info, *a))
    jobs._CACHE.clear()
    models = [tiny_model_dir, other, tiny_model_dir, other, tiny_model_dir]
    jl = write_jsonl(tmp_path / "j.jsonl", [job(i, m) for i, m in enumerate(models)])
    (tmp_path / "out").mkdir()
    code, out, err = kinema("batch", jl, "-o", "out/{index:05d}-{seed}.mp4")
    assert code == 0, err
    assert sorted(loads) == sorted({str(tiny_model_dir), str(other)})
    assert "ok            5" in out and "5 jobs, 1 process" in out
    rows = results(tmp_path / "j.results.jsonl")
    assert [r["status"] for r in rows] == ["ok"] * 5 and all(r["seconds"] > 0 for r in rows)
    for i, r in enumerate(rows):
        side = json.loads(Path(r["output"] + ".json").read_text())
        assert r["output"] == str(tmp_path / f"out/{i:05d}-{i}.mp4") and side["seed"] == i
        assert side["batch"]["job_hash"] == r["job_hash"] and side["batch"]["line"] == i + 1
    assert len({r["job_hash"] for r in rows}) == 5
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    code, out, err = kinema("batch", jl, "-o", "out/{index:05d}-{seed}.mp4")
    assert code == 0 and [r["status"] for r in results(tmp_path / "j.results.jsonl")] == ["skipped"] * 5
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == stamps


def test_a_changed_job_is_not_skipped(tiny_model_dir, tmp_path, kinema):
    """Same output, another seed: the old clip does not count as done; it is refused, or replaced with overwrite."""
    jl = write_jsonl(tmp_path / "j.jsonl", [job(0, tiny_model_dir, output="a.gif")])
    assert kinema("batch", jl, "--quiet")[0] == 0
    jl = write_jsonl(tmp_path / "j.jsonl", [job(0, tiny_model_dir, output="a.gif", seed=5)])
    code, _, err = kinema("batch", jl, "--quiet")
    assert code == 2 and "j.jsonl:1:" in err and "already exists; pass --overwrite" in err
    jl = write_jsonl(tmp_path / "j.jsonl", [job(0, tiny_model_dir, output="a.gif", seed=5, overwrite=True)])
    assert kinema("batch", jl, "--quiet")[0] == 0
    assert json.loads((tmp_path / "a.gif.json").read_text())["seed"] == 5
    assert results(tmp_path / "j.results.jsonl")[0]["status"] == "ok"
    assert kinema("batch", jl, "--quiet")[0] == 0 and results(tmp_path / "j.results.jsonl")[0]["status"] == "skipped"


def test_the_hash_follows_settings_and_input_content(tiny_model_dir, tmp_path):
    from PIL import Image

    from kinema import jobs
    from kinema.batch import job_hash

    a = job_hash(jobs.prepare_generate("a red circle", tiny_model_dir, seed=1, **CHEAP))
    assert a == job_hash(jobs.prepare_generate("a red circle", tiny_model_dir, seed=1, **CHEAP))
    assert a != job_hash(jobs.prepare_generate("a red circle", tiny_model_dir, seed=2, **CHEAP))
    assert a != job_hash(jobs.prepare_generate("a red circle", tiny_model_dir, seed=1, **{**CHEAP, "steps": 2}))
    image = tmp_path / "i.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)
    b = job_hash(jobs.prepare_animate(image, "a red circle", tiny_model_dir, **CHEAP))
    Image.fromarray(np.full((16, 16, 3), 9, np.uint8)).save(image)
    assert b != job_hash(jobs.prepare_animate(image, "a red circle", tiny_model_dir, **CHEAP))


def test_a_failing_job_is_recorded_and_the_batch_goes_on(tiny_model_dir, tmp_path, kinema, monkeypatch):
    from kinema import jobs

    real = jobs._DRIVERS["generate"]

    def driver(job, model, progress):
        if "boom" in job.prompt:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if "nan" in job.prompt:
            from kinema.errors import NumericalError

            raise NumericalError("the latents became NaN at step 1; try --dtype float32")
        return real(job, model, progress)

    monkeypatch.setitem(jobs._DRIVERS, "generate", driver)
    jl = write_jsonl(tmp_path / "j.jsonl", [job(0, tiny_model_dir), job(1, tiny_model_dir, prompt="boom"),
                                             job(2, tiny_model_dir, prompt="nan"), job(3, tiny_model_dir)])
    code, out, err = kinema("batch", jl, "-o", "{index}.webp")
    rows = results(tmp_path / "j.results.jsonl")
    assert [r["status"] for r in rows] == ["ok", "failed", "failed", "ok"]
    assert rows[1]["error"].startswith("out of memory") and "NaN" in rows[2]["error"]
    assert code == 2 and err.strip().splitlines()[-1].startswith("kinema: error: 2 of 4 jobs failed (first: line 2: out of memory")
    assert "failed        2" in out and "failed: line 3" in out
    assert {p for p in files(tmp_path) if ".webp" in p} == {"0.webp", "0.webp.json", "3.webp", "3.webp.json"}
    assert not [p for p in files(tmp_path) if ".tmp-" in p or ".rank" in p]


#################################################################################
#                          Kill and rerun; two processes                        #
#################################################################################


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _start_and_stop(cmd, cwd: Path, sig: int, outputs: int) -> tuple[int, str]:
    """Start `cmd` and send it `sig` once the clip folder holds `outputs` finished clips: (exit status, stderr)."""
    p = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while len(list((cwd / "out").glob("*.gif.json"))) < outputs and time.time() < deadline and p.poll() is None:
        time.sleep(0.01)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    return p.returncode, err


def _batch_of(tmp_path: Path, model: Path, n: int) -> list[str]:
    jl = write_jsonl(tmp_path / "j.jsonl", [job(i, model, output=f"out/{i:02d}.gif") for i in range(n)])
    (tmp_path / "out").mkdir()
    return [sys.executable, "-m", "kinema.cli", "batch", str(jl), "--quiet"]


def _finish_and_check(cmd, tmp_path: Path, n: int, done_before: set[str]) -> None:
    """Rerun to the end: the clips done before are skipped, untouched; the rest run once."""
    before = {name: (tmp_path / "out" / name).read_bytes() for name in done_before}
    r = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = results(tmp_path / "j.results.jsonl")
    assert len(rows) == n and [r["index"] for r in rows] == list(range(n))
    assert {Path(r["output"]).name + ".json" for r in rows if r["status"] == "skipped"} == done_before
    assert sum(r["status"] == "ok" for r in rows) == n - len(done_before)
    assert {name: (tmp_path / "out" / name).read_bytes() for name in done_before} == before
    assert len(list((tmp_path / "out").glob("*.gif"))) == n and not [q for q in files(tmp_path) if ".tmp-" in q]


def _done(tmp_path: Path) -> set[str]:
    sides = {q.name for q in (tmp_path / "out").glob("*.gif.json")}
    assert {q.name for q in (tmp_path / "out").glob("*.gif")} == {n[:-5] for n in sides}  # clip and sidecar: pairs
    return sides


def test_a_killed_batch_rerun_finishes_the_rest_and_repeats_nothing(tiny_model_dir, tmp_path):
    n = 24
    cmd = _batch_of(tmp_path, tiny_model_dir, n)
    _start_and_stop(cmd, tmp_path, signal.SIGKILL, 3)
    done = _done(tmp_path)
    assert 3 <= len(done) < n, "the batch was not killed mid-way"
    _finish_and_check(cmd, tmp_path, n, done)


@pytest.mark.slow
def test_a_stopped_batch_keeps_its_clips_and_leaves_no_partial_record(tiny_model_dir, tmp_path):
    """SIGTERM (as Ctrl-C): exit 130, the finished clips kept, no partial results; a rerun finishes the rest."""
    n = 24
    cmd = _batch_of(tmp_path, tiny_model_dir, n)
    code, err = _start_and_stop(cmd, tmp_path, signal.SIGTERM, 3)
    assert code == 130 and "kinema: interrupted" in err, err
    done = _done(tmp_path)
    assert 3 <= len(done) < n and not [q for q in files(tmp_path) if ".rank" in q or ".tmp-" in q]
    _finish_and_check(cmd, tmp_path, n, done)


def launch(launcher: str, jl: Path, cwd: Path, *extra) -> subprocess.CompletedProcess:
    bin = Path(sys.executable).parent
    head = {"torchrun": [str(bin / "torchrun"), "--standalone", "--nproc-per-node", "2"],
            "accelerate": [str(bin / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]}
    cmd = [*head[launcher], "-m", "kinema.cli", "batch", str(jl), *extra]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("launcher", ["torchrun", pytest.param("accelerate", marks=pytest.mark.slow)])
def test_two_processes_write_every_output_once(launcher, tiny_model_dir, tmp_path, kinema):
    n = 7
    jl = write_jsonl(tmp_path / "j.jsonl", [job(i, tiny_model_dir) for i in range(n)])
    if launcher == "accelerate":  # (slow) a bad job: every process stops before work; the launcher exits 1
        r = launch(launcher, jl, tmp_path, "-o", "out/{index}-{seed}.gif", "--quiet")
        assert r.returncode != 0 and r.stderr.count("kinema: error: ") == 1 and "j.jsonl:1,2,3,4,5,... (7 jobs): output folder" in r.stderr and not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()
    r = launch(launcher, jl, tmp_path, "-o", "out/{index}-{seed}.gif")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("ok            7") == 1 and "7 jobs, 2 processes" in r.stdout  # rank 0 alone prints
    rows = results(tmp_path / "j.results.jsonl")
    assert [x["index"] for x in rows] == list(range(n)) and all(x["status"] == "ok" for x in rows)
    assert [x["rank"] for x in rows] == [0, 0, 0, 0, 1, 1, 1]  # contiguous shares, the first rank one more
    assert sorted(files(tmp_path / "out")) == sorted(f"{i}-{i}.gif{s}" for i in range(n) for s in ("", ".json"))
    assert not [p for p in files(tmp_path) if ".rank" in p or ".tmp-" in p]
    # the same job in one process: same hash, same frames
    one = write_jsonl(tmp_path / "one.jsonl", [job(5, tiny_model_dir, output="one.gif")])
    code, _, err = kinema("batch", one, "--quiet")
    assert code == 0, err
    assert results(tmp_path / "one.results.jsonl")[0]["job_hash"] == rows[5]["job_hash"]
    a, _ = video_io.read_video(tmp_path / "one.gif")
    b, _ = video_io.read_video(tmp_path / "out" / "5-5.gif")
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


def test_shares_cover_every_job_once_in_order():
    from kinema.batch import World

    for n in range(12):
        for size in (1, 2, 3, 5):
            shares = [World(rank, size).share(list(range(n))) for rank in range(size)]
            assert sum(shares, []) == list(range(n))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_cfg_parallel_on_two_processes_gives_the_one_process_clip(trained_like_model, tmp_path, kinema):
    """--parallel cfg: the two branches of guidance on two processes, gathered every step: the same frames."""
    model = trained_like_model.path
    jobs = [job(i, model, guidance=3.5, frames=3, steps=3, negative_prompt="blurry") for i in range(3)]
    jl = write_jsonl(tmp_path / "j.jsonl", jobs)
    (tmp_path / "two").mkdir()
    r = launch("torchrun", jl, tmp_path, "-o", "two/{index}", "--parallel", "cfg", "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = results(tmp_path / "j.results.jsonl")
    assert [(x["status"], x["rank"], x["parallel"]["split_calls"]) for x in rows] == [("ok", 0, 3)] * 3
    (tmp_path / "one").mkdir()
    code, _, err = kinema("batch", jl, "-o", "one/{index}", "--results", "one.jsonl", "--quiet")
    assert code == 0, err
    unguided = write_jsonl(tmp_path / "g1.jsonl", [{**jobs[0], "guidance": 1, "output": "g1"}])
    assert kinema("batch", unguided, "--quiet")[0] == 0
    for i in range(3):
        a, _ = video_io.read_video(tmp_path / "one" / str(i))
        b, _ = video_io.read_video(tmp_path / "two" / str(i))
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
    a, _ = video_io.read_video(tmp_path / "one" / "0")
    assert np.abs(a.astype(int) - video_io.read_video(tmp_path / "g1")[0].astype(int)).max() > 10  # guidance matters
    code, _, err = kinema("batch", jl, "--parallel", "cfg")
    assert code == 2 and "--parallel cfg runs each job on two processes; launch an even number (got 1)" in err


def test_parallel_kinds_are_checked_before_work(monkeypatch):
    """--parallel: cfg wants pairs; ulysses:N and ring:N (diffusers' context parallelism) N processes and a GPU each."""
    import torch

    from kinema.errors import KinemaError
    from kinema.parallel import check, parse

    assert [parse(k) for k in ("jobs", "cfg", "ulysses:4", "ring:2")] == [("jobs", 1), ("cfg", 2), ("ulysses", 4), ("ring", 2)]
    for bad in ("bogus", "ulysses", "ulysses:1", "ring:x", "cfg:2", "ulysses:-2"):
        with pytest.raises(KinemaError, match="unknown --parallel"):
            parse(bad)
    check("jobs", 1), check("cfg", 2), check("cfg", 4)
    with pytest.raises(KinemaError, match="launch an even number"):
        check("cfg", 3)
    with pytest.raises(KinemaError, match="runs each job on 4 processes; launch 4"):
        check("ulysses:4", 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(KinemaError, match="runs on GPUs only"):
        check("ring:2", 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(KinemaError, match="needs a GPU per process: 2 processes on this node, 1 GPUs"):
        check("ulysses:2", 2)


def test_context_parallel_needs_a_planned_transformer(tiny_model, tmp_path):
    """Wan's transformer carries diffusers' context-parallel plan; kinema's UNet has none and is refused."""
    from kinema.models import wan_testing
    from kinema.models.family import load_model

    from kinema.errors import KinemaError
    from kinema.parallel import ContextParallel

    with pytest.raises(KinemaError, match="no context-parallel plan"):
        ContextParallel("ulysses", 2).apply(tiny_model)
    wan = load_model(wan_testing.t2v_folder(tmp_path / "wan"))
    assert [type(m).__name__ for m in wan.denoiser.modules() if getattr(m, "_cp_plan", None)] == ["WanTransformer3DModel"]
