"""The UI's jobs: the CLI's path (prepare -> check outputs -> run -> write) in a line, watched step by step.

A job is prepared (every check of the CLI) as soon as it is submitted, so a bad one is refused at once;
then it waits in one first-come line, at most `max_queue` behind the running one, told its place; then
it runs on the model loaded once by `jobs.load`. A clip is written only when its run has finished: a
stopped or failed job leaves no file.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import KinemaError, require
from . import forms


class Stopped(KinemaError):
    """The user pressed Stop."""


@dataclass
class Output:
    """What a finished job shows: the clip, its GIF, the sidecar's record and the command that remakes it."""

    clip: Path
    gif: Path
    sidecar: Path
    record: dict
    command: str
    warnings: tuple[str, ...] = ()  # the job's, as the CLI prints them


@dataclass(eq=False)
class Ticket:
    """A place in the line: whose job it is and its stop flag."""

    session: str
    stop: threading.Event = field(default_factory=threading.Event)


class Runner:
    """Runs the four tasks for the web UI: one at a time in submission order, each stoppable within one step."""

    def __init__(self, info, output_dir: Path, model_dir: str | None = None, placement: dict | None = None,
                 upload_dirs: tuple[Path, ...] = (), max_queue: int = 8):
        self.info, self.output_dir, self.model_dir = info, Path(output_dir), model_dir
        self.placement = dict(placement or {})  # device, dtype, attention, offload, threads: the serve command's
        self.upload_dirs = tuple(Path(d).resolve() for d in upload_dirs)
        self.max_queue = max_queue
        self._line: list[Ticket] = []  # the running job first, then the waiting ones
        self._changed = threading.Condition()
        self._loaded = False  # whether a job has run (and so loaded the model)

    def stop(self, session: str) -> bool:
        """Stop `session`'s jobs, the running one at its next step and the waiting ones; False when it has none."""
        with self._changed:
            mine = [t for t in self._line if t.session == session]
            for t in mine:
                t.stop.set()
            self._changed.notify_all()
        return bool(mine)

    def run(self, task: str, values: dict, session: str = "", progress=None) -> Output:
        """Prepare the job (every CLI check), wait for its turn, run it, write the clip, its sidecar and a GIF."""
        require(task in forms.FORMS, f"unknown task {task!r}; use one of {', '.join(forms.FORMS)}")
        self._check_room()  # before reading any upload
        job, shown, options = self.prepare(task, values)
        ticket = Ticket(session)
        with self._changed:
            self._check_room()
            self._line.append(ticket)
        try:
            self._wait_turn(ticket, progress)
            return self._run(job, shown, options, ticket.stop, progress)
        finally:
            with self._changed:
                self._line.remove(ticket)
                self._changed.notify_all()

    def _check_room(self) -> None:
        with self._changed:
            waiting = max(0, len(self._line) - 1)
            require(not self._line or waiting < self.max_queue,
                    f"the queue is full ({waiting} waiting); try again when a job has finished")

    def _wait_turn(self, ticket: Ticket, progress) -> None:
        """Until `ticket` is first in line, reporting its place whenever that changes."""
        place = None
        with self._changed:
            while self._line[0] is not ticket:
                if ticket.stop.is_set():
                    raise Stopped("stopped while waiting; nothing was written")
                ahead = self._line.index(ticket)
                if ahead != place and progress is not None:
                    progress(0, 1, f"queue: {ahead} job{'s' if ahead > 1 else ''} ahead")
                place = ahead
                self._changed.wait(timeout=1)

    def prepare(self, task: str, values: dict):
        """(the Job, the inputs as the command shows them, the options) from form values, checked as the CLI does."""
        from .. import jobs

        parsed = forms.parse(task, values)
        if parsed.pop("random_seed", False):
            parsed["seed"] = secrets.randbelow(2**31)
        inputs, prompt, options = forms.split(task, parsed)
        uploads = [p for p in (*inputs, options.get("last_image")) if p]
        for path in uploads:
            self.check_upload(path)
        try:
            job = jobs.PREPARE[task](*inputs, prompt, self.info, **options, **self.placement)
        except KinemaError as e:
            raise type(e)(self.hide_uploads(str(e), uploads)) from None
        if options.get("last_image"):
            options = {**options, "last_image": Path(options["last_image"]).name}
        return job, [Path(p).name for p in inputs if p], options

    def _run(self, job, shown: list[str], options: dict, stop: threading.Event, progress) -> Output:
        from .. import jobs, video_io
        from ..pipelines import loop

        out, _ = video_io.check_outputs(self.next_output(job.task, job.settings.seed))  # 1. a new name, checked

        def on_step(step: int, steps: int, desc: str) -> None:
            if stop.is_set():
                raise Stopped("stopped; nothing was written")
            if progress is not None:
                progress(step, steps, desc)

        if progress is not None:
            progress(0, job.settings.steps, "starting" if self._loaded else "loading the model")
        token = loop.ON_STEP.set(on_step)
        try:
            result = jobs.run(job, progress=False)  # 2. run, watched step by step
        finally:
            loop.ON_STEP.reset(token)
        self._loaded = True
        if stop.is_set():
            raise Stopped("stopped; nothing was written")
        command = forms.command(job.task, shown, job.prompt, {**options, "model": self.model_dir, **self.placement}, out.name)
        result.record["cli"] = command
        clip, sidecar = video_io.write_outputs(out, result)  # 3. the clip and sidecar, atomically
        gif = video_io.write_video(clip.with_suffix(".gif"), result.frames, result.fps)
        return Output(clip, Path(gif), sidecar, json.loads(sidecar.read_text(encoding="utf-8")), command, job.warnings)

    def next_output(self, task: str, seed: int) -> Path:
        """A new clip name in the output folder: time, task, seed (and a count where that is taken)."""
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{task}-{seed}"
        for k in range(1, 1000):
            name = stem if k == 1 else f"{stem}-{k}"
            if not any((self.output_dir / f"{name}{ext}").exists() for ext in (".mp4", ".mp4.json", ".gif")):
                return self.output_dir / f"{name}.mp4"
        raise KinemaError(f"too many clips named {stem} in {self.output_dir}; wait a second and retry")

    def check_upload(self, path: str) -> None:
        """Open nothing from the browser outside the upload area (Gradio checks this too; this is the UI's own)."""
        p = Path(path).resolve()
        require(any(p.is_relative_to(d) for d in self.upload_dirs),
                f"{Path(path).name} is not an uploaded file; upload it in the page")

    @staticmethod
    def hide_uploads(message: str, uploads: list[str]) -> str:
        """The CLI's message with each upload's place on the server replaced by its file name."""
        for path in uploads:
            message = message.replace(str(path), Path(path).name)
        return message
