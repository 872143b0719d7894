"""`kinema batch` driven with generated jobs files: exit 0 or 2 with one line, no traceback, no stray file.

A file is drawn as a format (JSONL, YAML, CSV), a few jobs (each cheap and valid, or with one field broken:
unknown keys and commands, wrong types, out-of-range values, bad or clashing output templates, missing
inputs), garbage lines, and sometimes damage to the whole text (truncation, bytes that are not UTF-8). A
batch either refuses before any work, leaving the folder as it was, or runs, adding only the outputs (and
sidecars) its results file names, and the results file; a valid job never fails at run time.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import PROMPT, check_contract, listing

FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
GOOD_OUTPUTS = ("{W}/o{index}.gif", "{W}/o-{index:03d}-{seed}.webp", "{W}/frames{index}", "{W}/c{line}.mp4")
BAD_OUTPUTS = ("{W}/same.gif", "{W}/{seed}.gif", "{W}/missing/{index}.gif", "{W}/{bogus}.gif", "{W}/{index:q}.gif",
               "{W}/{index.real}.gif", "{W}/{index[0]}.gif", "{W}/o{index}.avi", "{W}", "", "{W}/existing.gif",
               "{W}/{index:999999999999999999999}.gif", "{W}/o{index}.gif.json")
GOOD = dict(prompt=[PROMPT, "a blue square moving up"], frames=[1, 2, "2"], steps=[1, "1"], height=[16], width=[16, "16"],
            seed=[0, 3, "7"], guidance=[1, 3.5], quiet=[True, "true"], fps=[8, "0.5"])
BAD = dict(prompt=["", "   ", None, 5, [PROMPT], "x" * 10_001], frames=[0, -1, "abc", 2.5, 10**40, True, [1]],
           steps=[0, 1001, "nan", float("nan"), False], height=[15, 0, "16.0", {"a": 1}], seed=[-1, 2**64, "1e3"],
           guidance=[float("inf"), "nan", -1, 1e308], quiet=["maybe", 2, [True]], fps=[0, 241, "0x10"],
           command=["paint", "", None, "batch", "info", "GENERATE", 7], bogus=[1, "x"], help=[True], version=[True],
           image=["{W}/absent.png"], overwrite=["yes-ish"], **{"-o": ["{W}/x.gif"], "no-flow": [True], "--seed": [1]})


@st.composite
def one_job(draw, broken: bool):
    job = {"command": "generate", "model": "{MODEL}"}
    for key, values in GOOD.items():
        if key in ("prompt", "frames", "steps", "height", "width") or draw(st.booleans()):
            job[key] = draw(st.sampled_from(values))
    if broken:
        key = draw(st.sampled_from(sorted(BAD)))
        job[key] = draw(st.sampled_from(BAD[key]))
    if not draw(st.booleans()):  # hypothesis starts from False: most jobs name an output
        job["output"] = draw(st.sampled_from(BAD_OUTPUTS if broken and draw(st.booleans()) else GOOD_OUTPUTS))
    return job


@st.composite
def jobs_file(draw, damaged: bool):
    """(file name, bytes, extra arguments of kinema batch); not `damaged`: only the jobs' fields go wrong."""
    fmt = draw(st.sampled_from(["jsonl", "yaml", "csv"]))
    jobs = [draw(one_job(draw(st.booleans()))) for _ in range(draw(st.integers(1, 4)) - draw(st.integers(0, 1)))]
    garbage = draw(st.lists(st.sampled_from(["{", "[1, 2]", '"text"', "null", "- -", "a,b,c,d,e,f,g,h,i,j,k,l,m",
                                             "{\"command\": \"generate\"", "\t", "#", "\ufeff", "\u2028"]),
                               max_size=2 if damaged else 0))
    text = {"jsonl": _jsonl, "yaml": _yaml, "csv": _csv}[fmt](jobs, garbage)
    data = text.encode("utf-8")
    damage = draw(st.sampled_from(["none"] + ["truncate", "latin-1", "nul"] * damaged))
    if damage == "truncate" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif damage == "latin-1":
        data = b"\xe9" + data
    elif damage == "nul":
        data += b"\x00"
    args = []
    if draw(st.booleans()):
        args.append("--skip-invalid")
    if draw(st.booleans()):
        args += ["-o", draw(st.sampled_from(GOOD_OUTPUTS + BAD_OUTPUTS[:4]))]
    if draw(st.integers(0, 5)) == 5:
        args.append("--dry-run")
    if damaged and draw(st.integers(0, 5)) == 5:
        args.append(draw(st.sampled_from(["--bogus", "--results={W}/missing/r.jsonl", "--results={W}/dir.mp4", "extra"])))
    return f"jobs.{fmt}", data, args


def _jsonl(jobs, garbage) -> str:
    return "".join(json.dumps(j) + "\n" for j in jobs) + "".join(g + "\n" for g in garbage)


def _yaml(jobs, garbage) -> str:
    return yaml.safe_dump(jobs, allow_unicode=True) + "".join(g + "\n" for g in garbage) if jobs else "".join(garbage)


def _csv(jobs, garbage) -> str:
    keys = sorted({k for j in jobs for k in j}, key=lambda k: (k != "command", k))
    out = io.StringIO()
    w = csv.writer(out)
    if keys:
        w.writerow(keys)
    for j in jobs:
        w.writerow(["" if j.get(k) is None else _cell(j[k]) for k in keys])
    return out.getvalue() + "".join(g + "\n" for g in garbage)


def _cell(v) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _fill(text: str, work: Path, model: Path) -> str:
    return text.replace("{W}", str(work)).replace("{MODEL}", str(model))


@pytest.mark.parametrize("damaged", [False, True], ids=["bad-jobs", "bad-files"])
def test_generated_jobs_files(damaged, kinema, tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("batchfuzz")

    @FUZZ
    @given(drawn=jobs_file(damaged))
    def check(drawn):
        name, data, args = drawn
        work = root / f"w{len(list(root.iterdir()))}"
        work.mkdir()
        (work / "existing.gif").write_bytes(b"precious bytes")
        (work / "dir.mp4").mkdir()
        jobs = work / name
        try:
            jobs.write_bytes(_fill(data.decode("utf-8"), work, tiny_model_dir).encode("utf-8"))
        except UnicodeDecodeError:
            jobs.write_bytes(data)
        before = listing(work)
        result = kinema("batch", jobs, *[_fill(a, work, tiny_model_dir) for a in args])
        after = listing(work)
        allowed = set()
        results = work / "jobs.results.jsonl"
        if result.code == 0 and results.is_file():
            allowed.add(results.name)
            for row in map(json.loads, results.read_text().splitlines()):
                assert row["status"] in ("ok", "skipped", "invalid"), row
                if row["status"] == "ok":
                    out = Path(row["output"]).relative_to(work)
                    allowed |= {str(out), f"{out}.json"} | {p for p in after if p.startswith(f"{out}/")}
        check_contract(result, before, after, allowed)
        assert (work / "existing.gif").read_bytes() == b"precious bytes"
        assert "--dry-run" not in args or after == before

    check()
