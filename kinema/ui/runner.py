"""The UI's jobs: the CLI's path (check outputs -> prepare -> run -> write) with a step observer and a Stop.

One job runs at a time (a lock, besides the web queue); the model is loaded once by `jobs.load` and
shared. A clip is written only when its run has finished: a stopped or failed job leaves no file.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass
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


class Runner:
    """Runs the four tasks for the web UI: one at a time, each stoppable within one denoising step."""

    def __init__(self, info, output_dir: Path, model_dir: str | None = None, placement: dict | None = None,
                 upload_dirs: tuple[Path, ...] = ()):
        self.info, self.output_dir, self.model_dir = info, Path(output_dir), model_dir
        self.placement = dict(placement or {})  # device, dtype, attention, offload, threads: the serve command's
        self.upload_dirs = tuple(Path(d).resolve() for d in upload_dirs)
        self._lock = threading.Lock()
        self._running: tuple[str, threading.Event] | None = None  # (session, its stop flag)

    # ------------------------------------------------------------------ stop
    def stop(self, session: str) -> bool:
        """Stop `session`'s running job at its next step; False when it has none running."""
        running = self._running
        if running is None or running[0] != session:
            return False
        running[1].set()
        return True

    # ------------------------------------------------------------------- run
    def run(self, task: str, values: dict, session: str = "", progress=None) -> Output:
        """Check the form, prepare the job (every CLI check), run it, write the clip, its sidecar and a GIF."""
        require(task in forms.FORMS, f"unknown task {task!r}; use one of {', '.join(forms.FORMS)}")
        with self._lock:
            stop = threading.Event()
            self._running = (session, stop)
            try:
                return self._run(task, values, stop, progress)
            finally:
                self._running = None

    def _run(self, task: str, values: dict, stop: threading.Event, progress) -> Output:
        from .. import jobs, video_io
        from ..pipelines import loop

        parsed = forms.parse(task, values)
        if parsed.pop("random_seed", False):
            parsed["seed"] = secrets.randbelow(2**31)
        inputs, prompt, options = forms.split(task, parsed)
        uploads = {Path(p).name: p for p in inputs if p}
        for name in ("last_image",):
            if options.get(name):
                uploads[Path(options[name]).name] = options[name]
        for path in uploads.values():
            self.check_upload(path)
        out, _ = video_io.check_outputs(self.next_output(task, parsed.get("seed", 0)))  # 1. the outputs, before work
        try:
            job = jobs.PREPARE[task](*inputs, prompt, self.info, **options, **self.placement)  # 2. every check
        except KinemaError as e:
            raise type(e)(self.hide_uploads(str(e), uploads)) from None

        def on_step(step: int, steps: int, desc: str) -> None:
            if stop.is_set():
                raise Stopped("stopped; nothing was written")
            if progress is not None:
                progress(step, steps, desc)

        if progress is not None:
            progress(0, job.settings.steps, "starting")
        token = loop.ON_STEP.set(on_step)
        try:
            result = jobs.run(job, progress=False)  # 3. run, watched step by step
        finally:
            loop.ON_STEP.reset(token)
        if stop.is_set():
            raise Stopped("stopped; nothing was written")
        shown = [Path(p).name for p in inputs if p]
        opts = {**{k: (Path(v).name if k == "last_image" and v else v) for k, v in options.items()},
                "model": self.model_dir, **self.placement}
        result.record["cli"] = forms.command(task, shown, prompt, opts, out.name)
        clip, sidecar = video_io.write_outputs(out, result)  # 4. the clip and sidecar, atomically
        gif = video_io.write_video(clip.with_suffix(".gif"), result.frames, result.fps)
        record = json.loads(sidecar.read_text(encoding="utf-8"))
        return Output(clip, Path(gif), sidecar, record, result.record["cli"])

    # --------------------------------------------------------------- helpers
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
    def hide_uploads(message: str, uploads: dict) -> str:
        """The CLI's message with each upload's place on the server replaced by its file name."""
        for name, path in uploads.items():
            message = message.replace(str(path), name)
        return message
