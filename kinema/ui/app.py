"""The page: a tab per task (Generate, Animate, Restyle, Extend) and a History tab, on Gradio Blocks.

Each tab's inputs come from `forms.FORMS` (so the API's parameter names are the CLI's options); its Run
button calls `Runner.run` (`api_name` = the task), which keeps its own line of jobs; its Stop button
calls `Runner.stop`, outside Gradio's queue. After a job the tab shows the clip, a GIF to download, the
sidecar and the `kinema` command that remakes it; the History tab lists the output folder.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import gradio as gr

from .. import video_io
from ..errors import KinemaError
from . import forms, history
from .runner import Runner

TITLES = dict(generate="Generate", animate="Animate", restyle="Restyle", extend="Extend")  # the tabs and their buttons
ACCORDIONS = dict(more="More settings", long="Long clips and windows")
REQUIRED = ("prompt", "image", "video")


def component(f: forms.Field, value, task: str):
    """The input component of a field, showing `value` (the model folder's default); its element id is TASK-NAME."""
    common = dict(label=f.label, elem_id=f"{task}-{f.name}".replace("_", "-"))
    if f.kind == "text":
        hint = "a red circle moving right on a blue background" if f.name == "prompt" else None
        return gr.Textbox(value=value, lines=3 if f.name == "prompt" else 1, placeholder=hint, **common)
    if f.kind in ("int", "float") and f.optional:  # gr.Number shows None as 0: a text box can stay blank
        return gr.Textbox(value=shown(f, value), placeholder="blank: default", **common)
    if f.kind in ("int", "float"):
        return gr.Number(value=value, step=1 if f.kind == "int" else None, **common)
    if f.kind == "switch":
        return gr.Checkbox(value=value, **common)
    if f.kind == "tristate":
        return gr.Radio(list(forms.TRISTATE), value=value, **common)
    if f.kind == "choice":
        return gr.Dropdown(list(f.choices), value=value, **common)
    types = video_io.IMAGE_EXTS if f.kind == "image" else (*video_io.CONTAINER_EXTS, *video_io.ANIMATION_EXTS)
    return gr.File(file_types=list(types), type="filepath", height=120, **common)


def shown(f: forms.Field, value):
    """A value as its component holds it: an optional number as text, blank for the default."""
    if f.kind in ("int", "float") and f.optional:
        return "" if value is None else str(value)
    return value


def handler(task: str, runner: Runner):
    """The event function of a task's Run button: its parameters are the form's field names (the API's)."""
    names = forms.names(task)

    def run(*args):
        *values, request, progress = args

        def report(step: int, steps: int, desc: str) -> None:
            if progress is not None:
                progress((step, steps), desc=desc, unit="steps")

        try:
            out = runner.run(task, dict(zip(names, values)), getattr(request, "session_hash", "") or "", report)
        except KinemaError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except MemoryError:
            raise gr.Error("out of memory; try fewer frames, a smaller height/width", print_exception=False) from None
        for warning in out.warnings:
            gr.Warning(warning)
        return str(out.clip), str(out.gif), out.record, out.command

    # a blank field (None) is optional for API callers too: Gradio takes that from a default of None
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                default=inspect.Parameter.empty if n in REQUIRED else None) for n in names]
    params += [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
               inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress())]
    run.__signature__ = inspect.Signature(params)  # Gradio reads the API's names and its special arguments here
    run.__annotations__ = {"request": gr.Request}
    run.__name__ = run.__qualname__ = task
    return run


def rows(fields: list, width: int = 3) -> list[list]:
    """Fields laid out in rows: a text or a file alone, up to `width` small ones side by side."""
    out = []
    for f in fields:
        small = f.kind not in ("text", "image", "video")
        if small and out and len(out[-1]) < width and out[-1][0].kind not in ("text", "image", "video"):
            out[-1].append(f)
        else:
            out.append([f])
    return out


def panel(task: str, info, runner: Runner) -> dict:
    """One task's tab: inputs (the form), Run and Stop, and the results."""
    values = forms.defaults(task, info)
    inputs = {}
    with gr.Row():
        with gr.Column(scale=1):
            for group in ("main", *ACCORDIONS):
                fields = [f for f in forms.FORMS[task] if f.group == group]
                if not fields:
                    continue
                with gr.Accordion(ACCORDIONS[group], open=False) if group in ACCORDIONS else gr.Group():
                    for row in rows(fields):
                        with gr.Row():
                            for f in row:
                                inputs[f.name] = component(f, values[f.name], task)
            with gr.Row():
                run_button = gr.Button(TITLES[task], variant="primary", elem_id=f"{task}-run")
                stop_button = gr.Button("Stop", variant="stop", elem_id=f"{task}-stop")
        with gr.Column(scale=1):
            video = gr.Video(label="Clip", interactive=False, autoplay=True, loop=True, height=360, elem_id=f"{task}-video")
            gif = gr.File(label="GIF", interactive=False)
            command = gr.Textbox(label="The same clip from the command line", lines=2, interactive=False, buttons=["copy"],
                                 elem_id=f"{task}-command")
            sidecar = gr.JSON(label="Sidecar", open=False)
    outputs = [video, gif, sidecar, command]
    # no Gradio limit: the runner's own line keeps one job on the device, bounds the waiting ones and tells each
    # its place, and Stop reaches the waiting ones too
    event = run_button.click(handler(task, runner), [inputs[n] for n in forms.names(task)], outputs, api_name=task,
                             concurrency_limit=None, show_progress="full", show_progress_on=[video])
    return dict(inputs=inputs, event=event, stop=stop_button)


def build(runner: Runner, info) -> gr.Blocks:
    """The whole page."""
    with gr.Blocks(title="kinema", analytics_enabled=False) as demo:
        gr.Markdown(f"## kinema\nModel: **{info.name}** ({info.family}) · `{info.path}` · clips go to "
                    f"`{runner.output_dir}`")
        panels = {}
        with gr.Tabs() as tabs:
            for task, title in TITLES.items():
                if task in info.tasks:  # a checkpoint that only animates (Wan I2V) shows only Animate
                    with gr.Tab(title, id=task):
                        panels[task] = panel(task, info, runner)
            with gr.Tab("History", id="history"):
                listed = gr.State([])  # names of the entries shown, in order: a selection names one of them
                gallery = gr.Gallery(label="Clips in the output folder (select one to load its settings)", columns=6,
                                     height=480, object_fit="contain", preview=False, allow_preview=False,
                                     fit_columns=False, elem_id="history")
                refresh = gr.Button("Refresh")
        events = [p["event"] for p in panels.values()]

        def stop(request: gr.Request) -> None:
            if not runner.stop(getattr(request, "session_hash", "") or ""):
                gr.Info("no job of this page is running or waiting")

        for k, p in enumerate(panels.values()):
            p["stop"].click(stop, None, None, queue=False, api_name="stop" if k == 0 else False)

        def list_history():
            found = history.entries(runner.output_dir)
            return [(str(e.preview), e.caption) for e in found], [e.clip.name for e in found]

        every = [c for p in panels.values() for c in p["inputs"].values()]

        def load(names: list, evt: gr.SelectData):
            found = {e.clip.name: e for e in history.entries(runner.output_dir)}
            name = names[evt.index] if isinstance(evt.index, int) and 0 <= evt.index < len(names) else None
            if name not in found:
                raise gr.Error("that clip is no longer in the output folder; press Refresh")
            task, values = history.form_values(found[name].record)
            if task not in panels:
                raise gr.Error(f"this model cannot {task}; that clip was made with another")
            inputs = panels[task]["inputs"]
            return {tabs: gr.Tabs(selected=task),
                    **{inputs[f.name]: shown(f, values[f.name]) for f in forms.FORMS[task] if f.name in values}}

        for e in events:
            e.then(list_history, None, [gallery, listed], api_visibility="private")
        refresh.click(list_history, None, [gallery, listed], api_visibility="private")
        demo.load(list_history, None, [gallery, listed], api_visibility="private")
        gallery.select(load, listed, [tabs, *every], api_visibility="private")
    demo.queue(default_concurrency_limit=None)
    return demo


def upload_dirs() -> tuple[Path, ...]:
    """Where Gradio puts what the browser uploads (the only place the page's file inputs may point)."""
    from gradio.utils import get_upload_folder

    return (Path(get_upload_folder()),)
