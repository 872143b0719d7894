"""`kinema batch JOBS`: many clips from one jobs file, every job checked first, the model loaded once per process.

    kinema batch jobs.jsonl                         # one JSON object a line
    kinema batch sweep.yaml --skip-invalid          # a YAML list; bad jobs are reported and left out
    kinema batch prompts.csv -o "out/{index:05d}-{seed}.mp4"   # a header row; jobs without an output use the template
    torchrun --nproc-per-node 4 -m kinema.cli batch jobs.jsonl          # one share of the jobs per process
    accelerate launch --num_processes 8 -m kinema.cli batch jobs.jsonl  # (on CPUs add --multi_gpu: gloo)
    torchrun --nproc-per-node 2 -m kinema.cli batch jobs.jsonl --parallel cfg   # each clip's guidance on 2 processes

A job is a `kinema COMMAND` call written as fields: `command` (generate, animate, restyle, extend), its
positionals (`prompt`, `image`, `video`) and its options by flag name (`seed`, `frames`, `negative-prompt` or
`negative_prompt`; `true`/`false` for switches), `output` included, which may be a template of the job's
`index` (0-based, in file order), `line`, `command` and any option: `out/{index:05d}-{seed}.mp4`. Each job
is parsed by the CLI's own parser and prepared (`jobs.PREPARE`: every option, input and memory check) before
any model loads; a bad job is reported with its line number (exit 2), or left out with `--skip-invalid`.
Paths are relative to the current folder, as on the command line.

A job whose output exists with a sidecar recording the same job (`batch.job_hash`, a hash of its resolved
settings and fitted inputs) is skipped, so rerunning a killed batch finishes the rest and repeats nothing.
A job that fails is recorded and the batch goes on; `JOBS.results.jsonl` (or `--results`) gets one line per
job: status (ok, skipped, failed, invalid), seconds, output, error. Jobs that share a model run back to back.
Under torchrun or accelerate launch each process takes a contiguous share of the jobs (sorted by model),
on its own device (`cuda:LOCAL_RANK`, or the CPU); the processes agree over gloo; rank 0 merges the results.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import string
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import KinemaError, require

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".yaml": "yaml", ".yml": "yaml", ".csv": "csv"}
MAX_BYTES = 64 * 2**20  # a jobs file larger than this is refused (a million jobs fit)
STATUSES = ("ok", "skipped", "failed", "invalid")
NOT_FIELDS = ("func", "help")  # never template fields or job keys
SHOWN_ERRORS = 3  # bad jobs named in the one-line error

#################################################################################
#                                    Parser                                     #
#################################################################################


def add_parser(sub, fmt) -> None:
    """`kinema batch`: added to the CLI by cli.build_parser (nothing heavy imported here)."""
    _, examples, text = __doc__.split("\n\n", 2)
    s = sub.add_parser("batch", help="run many jobs from a JSONL, YAML or CSV file, the model loaded once",
                       formatter_class=type("BatchHelp", (argparse.RawDescriptionHelpFormatter, fmt), {}),
                       description=text, epilog="examples:\n" + examples)
    s.add_argument("jobs", help="jobs file: .jsonl (a JSON object a line), .yaml (a list of mappings) or .csv (a header row)")
    s.add_argument("-o", "--output", default=None,
                   help="output of jobs that name none: a template such as 'out/{index:05d}-{seed}.mp4'")
    s.add_argument("--skip-invalid", action="store_true", help="report bad jobs and run the others")
    s.add_argument("--results", default=None, help="results file (default: JOBS with .results.jsonl for its suffix)")
    s.add_argument("--dry-run", action="store_true", help="check every job and print the plan; run nothing")
    s.add_argument("--parallel", default="jobs", metavar="jobs|cfg|ulysses:N|ring:N",
                   help="jobs: each process runs its share of the jobs; cfg: processes in pairs, each pair running its "
                        "share with the conditional and unconditional branches of guidance on its two processes; "
                        "ulysses:N, ring:N: every job on all N processes (GPUs) with diffusers' context parallelism (Wan)")
    s.add_argument("--quiet", action="store_true", help="no progress bars and no summary table")
    s.set_defaults(func=cmd_batch)


def cmd_batch(args) -> None:
    """Check every job, run this process's share, record the results; exit 2 if any job failed."""
    world = World.start()
    try:
        path, results = Path(args.jobs), _results_path(args)
        plan = world.from_rank0(lambda: _check_parallel(args.parallel, world.size)
                                or validate(path, args.output, args.skip_invalid, results))
        if args.dry_run:
            if world.rank == 0:
                _print_plan(plan)
            return
        team = Team.of(world, args.parallel)
        mine = World(team.index, team.count).share(runnable(plan))
        records = run_share(mine, path, world, show=not args.quiet and world.rank == 0, team=team)
        ranks = world.gather(records)  # over the process group: no file shared between nodes is needed
        failed = world.from_rank0(lambda: finish(plan, ranks, results, world.size, quiet=args.quiet))
    finally:
        world.close()
    if failed:
        require(world.rank != 0, failed)
        raise SystemExit(2)  # rank 0 says why


#################################################################################
#                                 Reading jobs                                  #
#################################################################################


@dataclass
class Entry:
    """One job of the file: where it is, what it asks for, and what became of it."""

    index: int  # 0-based, in file order
    line: int
    fields: dict | None = None
    command: str | None = None
    args: argparse.Namespace | None = None
    output: str | None = None  # the rendered output, absolute
    status: str = "pending"  # pending (to run), skipped (done before), invalid
    error: str | None = None
    job_hash: str | None = None
    model_key: tuple = ()
    warnings: tuple = field(default_factory=tuple)


def read_jobs(path: Path) -> list[Entry]:
    """The jobs of a JSONL, YAML or CSV file, each with its line; a job that cannot be read is already invalid."""
    fmt = FORMATS.get(path.suffix.lower())
    require(fmt is not None, f"jobs file {path} must end in .jsonl, .yaml, .yml or .csv")
    require(not path.is_dir(), f"jobs file {path} is a folder; pass a .jsonl, .yaml or .csv file of jobs")
    require(path.is_file(), f"jobs file {path} does not exist; pass a .jsonl, .yaml or .csv file of jobs")
    require(path.stat().st_size <= MAX_BYTES, f"jobs file {path} is larger than {MAX_BYTES // 2**20} MiB; split it")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise KinemaError(f"cannot read jobs file {path} as UTF-8 text ({type(e).__name__}); save it as UTF-8") from None
    require("\x00" not in text, f"jobs file {path} holds NUL bytes; it is not a text file of jobs")
    rows = dict(jsonl=_read_jsonl, yaml=_read_yaml, csv=_read_csv)[fmt](text, path)
    entries = []
    for line, value in rows:
        e = Entry(len(entries), line)
        if isinstance(value, str):
            e.status, e.error = "invalid", value
        else:
            e.fields = value
        entries.append(e)
    require(entries, f"jobs file {path} holds no jobs; add one a line, e.g. "
                     '{"command": "generate", "prompt": "a red circle moving right", "output": "out/{index}.mp4"}')
    return entries


def _read_jsonl(text: str, path: Path) -> list[tuple[int, dict | str]]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            rows.append((n, _as_job(json.loads(line))))
        except RecursionError:
            rows.append((n, "the job is nested too deeply; a job is one flat JSON object"))
        except ValueError as e:  # JSONDecodeError, and integers too long to read
            rows.append((n, f"not valid JSON ({getattr(e, 'msg', str(e).split(':')[0])}); a job is one JSON object a line"))
    return rows


def _read_yaml(text: str, path: Path) -> list[tuple[int, dict | str]]:
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        require(root is None or isinstance(root, yaml.SequenceNode),
                f"jobs file {path} must be a YAML list of jobs (- command: generate ...), not a "
                f"{'mapping' if isinstance(root, yaml.MappingNode) else 'single value'}")
        rows = []
        for node in root.value if root is not None else ():
            try:
                rows.append((node.start_mark.line + 1, _as_job(loader.construct_object(node, deep=True))))
            except yaml.YAMLError as e:
                rows.append((node.start_mark.line + 1, f"not a job ({_first_line(e)})"))
        return rows
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise KinemaError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or _first_line(e)}); "
                          f"the jobs file must be a YAML list") from None
    except RecursionError:
        raise KinemaError(f"jobs file {path} is nested too deeply to be a list of jobs") from None
    finally:
        loader.dispose()


def _read_csv(text: str, path: Path) -> list[tuple[int, dict | str]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    rows, end = [], 0
    try:
        header = next(reader, None)
        require(header and any(h.strip() for h in header), f"jobs file {path} needs a header row such as command,prompt,output")
        header = [h.strip() for h in header]
        twice = sorted({h for h in header if h and header.count(h) > 1})
        require(not twice, f"{path}:1: column {twice[0] if twice else ''!r} appears twice in the header")
        end = reader.line_num
        for row in reader:
            start, end = end + 1, reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) > len(header):
                rows.append((start, f"the row has {len(row)} cells but the header names {len(header)} columns"))
                continue
            unnamed = [i for i, (h, c) in enumerate(zip(header, row)) if not h and c.strip()]
            if unnamed:
                rows.append((start, f"cell {unnamed[0] + 1} has a value but its column has no name in the header"))
                continue
            rows.append((start, {h: c for h, c in zip(header, row) if h and c != ""}))
    except csv.Error as e:
        raise KinemaError(f"{path}:{end + 1}: not valid CSV ({e}); quote cells that hold commas or newlines") from None
    return rows


def _as_job(value) -> dict | str:
    """The job's fields, or what is wrong with them."""
    if not isinstance(value, dict):
        return f"a job must be a mapping of fields such as command, prompt, output (got {type(value).__name__})"
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        return f"field names must be text (got {bad[0]!r})"
    return value


#################################################################################
#                                  Validation                                   #
#################################################################################


def validate(path: Path, template: str | None, skip_invalid: bool, results: Path) -> list[Entry]:
    """Every job parsed, its output rendered, prepared (no model loaded), hashed; refuse the batch if one is bad."""
    from .cli import build_parser

    _check_results(results)
    entries = read_jobs(path)
    parsers = _task_parsers(build_parser())
    for e in entries:
        if e.status == "pending":
            _guard(e, _parse, e, parsers, template)
    _refuse_duplicates(entries)
    infos: dict = {}
    for e in entries:
        if e.status == "pending":
            _guard(e, _prepare_and_check, e, infos)
    bad = [e for e in entries if e.status == "invalid"]
    for e in entries:
        for w in e.warnings:
            print(f"kinema: warning: {path}:{e.line}: {w}", file=sys.stderr)
    if bad and not skip_invalid:
        groups: dict[str, list[int]] = {}  # the same problem on many lines is said once
        for e in bad:
            groups.setdefault(e.error, []).append(e.line)
        shown = "; ".join(f"{path}:{_lines(lines)}: {error}" for error, lines in list(groups.items())[:SHOWN_ERRORS])
        more = f" (and {len(groups) - SHOWN_ERRORS} more problems)" if len(groups) > SHOWN_ERRORS else ""
        raise KinemaError(f"{shown}{more}; fix the job{'s' if len(bad) > 1 else ''} or pass --skip-invalid")
    for e in bad:
        print(f"kinema: warning: {path}:{e.line}: {e.error}; left out (--skip-invalid)", file=sys.stderr)
    require(len(bad) < len(entries), f"none of the {len(entries)} jobs in {path} is valid; nothing to run")
    return entries


def _lines(lines: list[int]) -> str:
    return ",".join(map(str, lines[:5])) + (f",... ({len(lines)} jobs)" if len(lines) > 5 else "")


def _guard(e: Entry, check, *args) -> None:
    """`check(*args)`; what it refuses makes the job invalid, with the reason."""
    try:
        check(*args)
    except KinemaError as err:
        e.status, e.error = "invalid", str(err)
    except MemoryError:
        e.status, e.error = "invalid", "out of memory while checking the job; try a smaller clip"
    except OSError as err:  # a path the file system refuses (too long, a loop of links)
        e.status, e.error = "invalid", f"{_first_line(err)}; choose another path"


class _JobError(KinemaError):
    """argparse's complaint about one job."""


def _task_parsers(parser) -> dict:
    """The CLI's subparsers of the tasks, erroring by exception instead of exiting."""
    from .jobs import TASKS

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))

    def error(message):
        raise _JobError(message)

    parsers = {}
    for name in TASKS:
        s = sub.choices[name]
        s.error = error
        s.exit = lambda status=0, message=None: error(message or "asked to exit")
        parsers[name] = s
    return parsers


def _parse(e: Entry, parsers: dict, template: str | None) -> None:
    fields = dict(e.fields)
    command = fields.pop("command", None)
    require(isinstance(command, str) and command in parsers,
            f"unknown command {command!r}; a job's command is one of {', '.join(parsers)}" if command is not None
            else f"the job names no command; add \"command\": one of {', '.join(parsers)}")
    if template is not None and fields.get("output") in (None, "") and fields.get("o") in (None, ""):
        fields["output"] = template
    s = parsers[command]
    e.command, e.args = command, s.parse_args(_argv(s, command, fields))
    e.output = _render(e, e.args.output)


def _argv(parser, command: str, fields: dict) -> list[str]:
    """The command line that a job's fields stand for: options as --flag=value, then the positionals after --."""
    positionals = [a.dest for a in parser._actions if not a.option_strings]
    flags = {o.lstrip("-").replace("-", "_"): (a, o) for a in parser._actions for o in a.option_strings
             if a.dest not in NOT_FIELDS}
    options, given = [], {}
    for key, value in fields.items():
        name = key.lstrip("-").replace("-", "_")  # seed, --seed, negative-prompt, negative_prompt
        if name in positionals:
            require(isinstance(value, (str, int, float)) and not isinstance(value, bool),
                    f"{key} must be text (got {type(value).__name__})")
            given[name] = str(value)
        elif name in flags:
            options += _flag(*flags[name], key, value)
        else:
            raise KinemaError(f"unknown option {key!r} for {command}; see kinema {command} --help")
    return options + ["--"] + [given[p] for p in positionals if p in given]


def _flag(action, option: str, key: str, value) -> list[str]:
    if value is None:
        return []
    switch = isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction))
    if switch:
        on = _as_bool(key, value) != option.startswith("--no-")
        if isinstance(action, argparse._StoreTrueAction):
            return [option] if on else []
        return ["--" + action.dest.replace("_", "-") if on else "--no-" + action.dest.replace("_", "-")]
    require(not isinstance(value, bool), f"{key} takes a value, not {str(value).lower()}")
    require(isinstance(value, (str, int, float)), f"{key} must be a number or text (got {type(value).__name__})")
    try:
        text = value if isinstance(value, str) else repr(value)
    except ValueError:  # an integer too long to write out
        raise KinemaError(f"{key} is too large a number") from None
    long = max(action.option_strings, key=len)
    return [f"{long}={text}"]


def _as_bool(key: str, value) -> bool:
    if isinstance(value, bool):
        return value
    words = {"true": True, "yes": True, "1": True, "on": True, "false": False, "no": False, "0": False, "off": False}
    text = str(value).strip().lower() if isinstance(value, (str, int)) else None
    require(text in words, f"{key} is a switch: give true or false (got {value!r})")
    return words[text]


def _render(e: Entry, output: str) -> str:
    """The job's output from its template: fields index, line, command and every option; it must vary with index."""
    values = {k: v for k, v in vars(e.args).items() if k not in NOT_FIELDS}
    values.update(command=e.command, line=e.line)
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(output) if name is not None]
        for name in names:
            require(name in values or name == "index",
                    f"output template {output!r} names {{{name}}}; use index, line, command or an option such as seed")
        here, nxt = output.format_map({**values, "index": e.index}), output.format_map({**values, "index": e.index + 1})
    except (ValueError, TypeError) as err:
        raise KinemaError(f"output template {output!r} cannot be filled in ({err}); e.g. out/{{index:05d}}-{{seed}}.mp4") from None
    require(not names or here != nxt,
            f"output template {output!r} does not vary with the job's index, so jobs would share a file; add {{index}}")
    require(len(here) <= 4096, f"the output path is {len(here)} characters long; keep it under 4096")
    require(here.strip() != "", "the output is empty; give a file name such as out/{index:05d}.mp4")
    return os.path.abspath(os.path.expanduser(here))


def _refuse_duplicates(entries: list[Entry]) -> None:
    first: dict[str, Entry] = {}
    for e in entries:
        if e.status != "pending":
            continue
        key = os.path.normcase(os.path.normpath(e.output))
        if key in first:
            e.status, e.error = "invalid", f"output {e.output} is also the output of the job at line {first[key].line}"
        else:
            first[key] = e


def _prepare_and_check(e: Entry, infos: dict) -> None:
    """Prepare (every check, no weights), hash, and skip the job if its output already records the same job."""
    from . import video_io

    job = prepare(e, infos)
    e.job_hash, e.warnings = job_hash(job), tuple(job.warnings)
    p = job.placement
    e.model_key = (str(job.info.path), str(p.device), str(p.dtype), p.attention, p.offload, p.loras, p.lora_strict,
                   p.quantize, p.compile, p.transformer or "")
    if done(e.output, e.job_hash):
        e.status = "skipped"
        return
    video_io.check_outputs(e.output, overwrite=e.args.overwrite)


def prepare(e: Entry, infos: dict, device: str | None = None):
    """jobs.PREPARE for the entry, as `kinema COMMAND` would; each model folder described once."""
    from . import jobs
    from .cli import NOT_OPTIONS
    from .models.family import describe

    a = e.args
    if a.model not in infos:
        infos[a.model] = describe(a.model)
    inputs = [getattr(a, name) for name in ("image", "video") if hasattr(a, name)]
    options = {k: v for k, v in vars(a).items() if k not in NOT_OPTIONS}
    if device is not None:
        options["device"] = device
    return jobs.PREPARE[e.command](*inputs, a.prompt, infos[a.model], **options)


def job_hash(job) -> str:
    """A hash of everything that decides the clip: task, prompt, model, resolved settings, fitted inputs, dtype."""
    import dataclasses
    import hashlib

    import numpy as np

    def plain(o):
        return dataclasses.asdict(o) if dataclasses.is_dataclass(o) else o

    what = dict(task=job.task, prompt=job.prompt, model=str(Path(job.info.path).resolve()), family=job.info.family,
                settings=job.settings.as_dict(), long=plain(job.long), restyle=plain(job.restyle), inputs=dict(job.inputs),
                image_noise=job.image_noise, dtype=str(job.placement.dtype))
    if job.placement.quantize != "none" or job.placement.transformer:  # other weights make another clip
        what["weights"] = dict(quantize=job.placement.quantize, transformer=job.placement.transformer)
    h = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode())
    for array in (job.image, job.last_image, job.source):
        if array is not None:
            h.update(repr(array.shape).encode())
            h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:32]


def done(output: str, digest: str) -> bool:
    """The output exists and its sidecar records this job."""
    from .video_io import sidecar_path

    side = sidecar_path(output)
    if not os.path.exists(output) or not side.is_file() or side.is_symlink():
        return False
    try:
        record = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(record, dict) and isinstance(record.get("batch"), dict) and record["batch"].get("job_hash") == digest


def runnable(plan: list[Entry]) -> list[Entry]:
    """The jobs to run, those sharing a model together, then in file order: the same on every process."""
    return sorted((e for e in plan if e.status == "pending"), key=lambda e: (e.model_key, e.index))


def _results_path(args) -> Path:
    return Path(args.results) if args.results else Path(args.jobs).with_suffix(".results.jsonl")


def _check_results(results: Path) -> None:
    require(results.suffix.lower() not in FORMATS or results.suffix.lower() == ".jsonl",
            f"--results {results} would be read as a jobs file; name it .jsonl")
    require(results.parent.is_dir(), f"the results folder {results.parent} does not exist; create it or pass --results")
    require(not results.is_dir(), f"the results file {results} is a folder; pass another --results")
    require(os.access(results.parent, os.W_OK), f"the results folder {results.parent} is not writable; pass --results")


def _print_plan(plan: list[Entry]) -> None:
    for e in plan:
        what = e.error if e.status == "invalid" else e.output
        print(f"line {e.line:>5}  {e.status if e.status != 'pending' else 'run':<8} {e.command or '-':<9} {what}")


#################################################################################
#                                    Running                                    #
#################################################################################


def _check_parallel(kind: str, processes: int) -> None:
    from .parallel import check

    check(kind, processes)


@dataclass
class Team:
    """The processes that run one job together: this process alone, or a pair splitting guidance's branches."""

    index: int = 0  # which team, in 0..count-1
    count: int = 1
    place: int = 0  # this process's place in its team; place 0 writes the outputs and results
    group: object = None  # cfg: the pair's process group
    context: object = None  # ulysses, ring: parallel.ContextParallel over every process

    @classmethod
    def of(cls, world: World, kind: str) -> Team:
        from .parallel import ContextParallel, pair_groups, parse

        name, n = parse(kind)
        if name == "jobs":
            return cls(world.rank, world.size)
        if name == "cfg":
            index, place, group = pair_groups(world.rank, world.size)
            return cls(index, world.size // 2, place, group)
        return cls(0, 1, world.rank, context=ContextParallel(name, n))

    def model(self, job):
        """The job's model as this team runs it (None where the job needs none)."""
        from . import jobs
        from .parallel import cfg_parallel

        if not job.needs_model:
            return None
        model = jobs.load(job.info, job.placement)
        if self.context is not None:
            return self.context.apply(model)
        return model if self.group is None else cfg_parallel(model, self.place, self.group)

    def record(self, model) -> dict | None:
        """What the sidecar says of how the job was shared."""
        if self.group is not None:
            return dict(kind="cfg", processes=2, split_calls=model.denoiser.split_calls)
        if self.context is not None:
            return dict(kind=self.context.name, processes=self.context.degree)
        return None


def run_share(mine: list[Entry], path: Path, world: World, show: bool, team: Team | None = None) -> list[dict]:
    """Run this process's jobs one by one; each ends as a record (ok or failed), whatever happens to it.

    In a team of two (--parallel cfg) both processes run every job of the team's share, step for step; the
    first writes the outputs and returns the records. An interrupt ends the batch: the clips written so far
    stay, and a rerun skips them.
    """
    from tqdm.auto import tqdm

    from . import jobs, video_io

    team = team or Team(world.rank, world.size)
    writer = team.place == 0

    infos: dict = {}
    records = []
    with tqdm(total=len(mine), desc="jobs", unit="job", disable=not show, dynamic_ncols=True) as bar:
        for e in mine:
            t0 = time.perf_counter()
            record = dict(index=e.index, line=e.line, command=e.command, output=e.output, rank=world.rank)
            try:
                job = prepare(e, infos, world.device(e.args.device))
                digest = job_hash(job)  # the inputs as read now
                t_load = time.perf_counter()
                model = team.model(job)
                load_s = time.perf_counter() - t_load
                result = jobs.run(job, model, progress=show)
                result.record["timings"]["load"] = round(load_s, 3)
                result.record["batch"] = dict(jobs_file=str(path.resolve()), index=e.index, line=e.line, job_hash=digest)
                if team.record(model) is not None:
                    result.record["parallel"] = team.record(model)
                if not writer:
                    continue
                video_io.write_outputs(e.output, result, overwrite=e.args.overwrite)
                record.update(status="ok", job_hash=digest, timings=result.record.get("timings", {}))
                if "parallel" in result.record:
                    record["parallel"] = result.record["parallel"]
            except KeyboardInterrupt:
                raise
            except Exception as err:  # a job's failure is recorded, and the batch goes on
                record.update(status="failed", error=_describe_error(err))
                world.free_memory()
                if not writer:
                    continue
            record["seconds"] = round(time.perf_counter() - t0, 3)
            records.append(record)
            bar.update(1)
    return records


def _describe_error(err: BaseException) -> str:
    if isinstance(err, KinemaError):
        return str(err)
    if isinstance(err, MemoryError) or "out of memory" in str(err).lower():
        return "out of memory; try fewer --frames, a smaller --height/--width or --attention chunked"
    return f"{type(err).__name__}: {_first_line(err)}"


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:300] if lines else type(err).__name__


def finish(plan: list[Entry], ranks: list[list[dict]], results: Path, processes: int, quiet: bool = False) -> str:
    """Merge every process's records with the jobs not run, write them, print the summary; an error line or ''."""
    records = {e.index: dict(index=e.index, line=e.line, command=e.command, output=e.output, status=e.status,
                             seconds=0.0, job_hash=e.job_hash, error=e.error)
               for e in plan if e.status != "pending"}
    records.update((r["index"], r) for rows in ranks for r in rows)
    rows = [records[i] for i in sorted(records)]
    tmp = results.with_name(f".{results.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, results)
    finally:
        tmp.unlink(missing_ok=True)
    if not quiet:
        print(summary(rows, processes, results))
    failed = [r for r in rows if r["status"] == "failed"]
    if not failed:
        return ""
    first = failed[0]
    return f"{len(failed)} of {len(rows)} jobs failed (first: line {first['line']}: {first['error']}); see {results}"


def summary(rows: list[dict], processes: int, results: Path) -> str:
    """The table printed at the end: jobs and seconds per status, then the failed jobs."""
    lines = [f"{'status':<8} {'jobs':>6} {'seconds':>9}"]
    for status in STATUSES:
        these = [r for r in rows if r["status"] == status]
        seconds = sum(r.get("seconds") or 0 for r in these)
        lines.append(f"{status:<8} {len(these):>6} {seconds if status in ('ok', 'failed') else 0:>9.1f}")
    lines += [f"failed: line {r['line']} {r['output']}: {r['error']}" for r in rows if r["status"] == "failed"][:10]
    lines.append(f"{len(rows)} jobs, {processes} process{'es' if processes > 1 else ''}; results in {results}")
    return "\n".join(lines)


#################################################################################
#                                   Processes                                   #
#################################################################################


@dataclass
class World:
    """This process's place among the launcher's (torchrun, accelerate launch): rank, size, its device.

    The processes talk over gloo (the plan, a barrier, the outcome), whatever the devices: small messages,
    and no NCCL rule against two processes on one GPU. Jobs go to `cuda:LOCAL_RANK` (modulo the GPUs).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def start(cls) -> World:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        from datetime import timedelta

        import torch.distributed as dist

        # the launcher's env:// rendezvous; a long timeout, since ranks wait at the end for the slowest share
        dist.init_process_group("gloo", timeout=timedelta(days=7))
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def device(self, asked: str) -> str | None:
        """The job's device in this process: CUDA jobs go to the GPU of the local rank."""
        import torch

        if self.size > 1 and asked in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return None

    def share(self, items: list) -> list:
        """This process's contiguous share, the first ranks taking one more when uneven (as accelerate's split)."""
        q, r = divmod(len(items), self.size)
        start = self.rank * q + min(self.rank, r)
        return items[start : start + q + (self.rank < r)]

    def from_rank0(self, compute):
        """`compute()` on rank 0, its value on every rank; when it fails there, the others exit with status 2."""
        if self.size == 1:
            return compute()
        import torch.distributed as dist

        box = [None]
        if self.rank == 0:
            try:
                box = [("value", compute())]
            except BaseException as err:
                dist.broadcast_object_list([("error", str(err))], src=0)
                raise
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise SystemExit(2)  # rank 0 says why
        return value

    def gather(self, records: list) -> list[list]:
        """Every process's records on rank 0 (in rank order); elsewhere an empty list."""
        if self.size == 1:
            return [records]
        import torch.distributed as dist

        out = [None] * self.size if self.rank == 0 else None
        dist.gather_object(records, out, dst=0)
        return out or []

    def free_memory(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def close(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
