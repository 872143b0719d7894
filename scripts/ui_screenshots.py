"""Drive the web UI in a real headless Chromium: type a prompt, press Generate, wait for the clip to play,
load it back from the History tab, start a long job and Stop it, and save a screenshot of every tab (and
of the running job's progress).

    python scripts/ui_screenshots.py                       # serves the shipped model, writes docs/ui/*.png
    python scripts/ui_screenshots.py --url http://127.0.0.1:7860 --out /tmp/shots --steps 2

Needs Debian's `chromium` (apt-get install chromium; /usr/bin/chromium) and the Python package
playwright (`pip install 'kinema[test]'`); Playwright's own browser download is not used.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
PROMPT = "a red circle moving right on a blue background"
TABS = ("Generate", "Animate", "Restyle", "Extend", "History")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    """Until `url` answers (or the server process ends, or `timeout` seconds pass)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"kinema serve ended with status {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f} s")


def serve(model: str | None, output_dir: str, *extra: str) -> tuple[subprocess.Popen, str]:
    """`kinema serve` on a free port of 127.0.0.1: (the process, its URL) once the page answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "kinema.cli", "serve", "--port", str(port), "--output-dir", output_dir, *extra]
    cmd += ["--model", model] if model else []
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for(url, proc)
    except BaseException:
        proc.terminate()
        raise
    return proc, url


def shoot(url: str, out: Path, steps: int | None = None, frames: int | None = None, prompt: str = PROMPT,
          timeout_s: float = 120) -> dict:
    """Generate one clip in the browser, see it play, load it back from History; a PNG per tab in `out`."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    seen = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            page.locator("#generate-prompt textarea").fill(prompt)  # 1. type a prompt (and cheap settings)
            for name, value in (("steps", steps), ("frames", frames)):
                if value is not None:
                    page.locator(f"#generate-{name} input").fill(str(value))
            page.locator("#generate-run").click()  # 2. press Generate
            video = page.locator("#generate-video video")
            video.wait_for(state="attached", timeout=timeout_s * 1000)  # 3. the clip arrives and plays
            seen["played"] = video.evaluate(
                """async v => { v.muted = true; await v.play();
                   const t0 = performance.now();
                   while (v.currentTime <= 0 && performance.now() - t0 < 10000) await new Promise(r => setTimeout(r, 50));
                   return {time: v.currentTime, paused: v.paused, width: v.videoWidth, height: v.videoHeight}; }""")
            page.screenshot(path=str(out / "generate.png"), full_page=True)
            for tab in TABS[1:]:  # 4. every other tab
                page.get_by_role("tab", name=tab).click()
                page.wait_for_timeout(500)
                page.screenshot(path=str(out / f"{tab.lower()}.png"), full_page=True)
            page.locator("#history .thumbnail-item").first.click()  # 5. a past job back into its tab
            page.locator("#generate-prompt textarea").wait_for(state="visible", timeout=10_000)
            page.wait_for_function("() => document.querySelector('#generate-prompt textarea').value.length > 0")
            seen["loaded_prompt"] = page.locator("#generate-prompt textarea").input_value()
            seen["loaded_steps"] = page.locator("#generate-steps input").input_value()
            # 6. progress, and Stop: last, so that its message is in no other screenshot
            seen["stopped"] = stop_a_long_job(page, out / "running.png", timeout_s)
        finally:
            browser.close()
    seen["screenshots"] = sorted(str(p) for p in out.glob("*.png"))
    return seen


def stop_a_long_job(page, shot: Path, timeout_s: float) -> str:
    """Generate with 1000 steps, screenshot its progress bar once it denoises, press Stop: the message shown."""
    page.locator("#generate-steps input").fill("1000")
    page.locator("#generate-run").click()
    page.locator("#generate-video").get_by_text("denoise").first.wait_for(timeout=timeout_s * 1000)
    page.screenshot(path=str(shot), full_page=True)
    page.locator("#generate-stop").click()
    message = page.get_by_text("stopped; nothing was written").first
    message.wait_for(timeout=timeout_s * 1000)
    return message.inner_text()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=None, help="a running kinema serve (default: start one)")
    ap.add_argument("--model", default=None, help="model folder for the server this script starts")
    ap.add_argument("--out", default="docs/ui", help="where the PNGs go")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    ap.add_argument("--frames", type=int, default=None, help="frames (default: the model's)")
    args = ap.parse_args(argv)
    proc, url = None, args.url
    with tempfile.TemporaryDirectory() as clips:
        if url is None:
            proc, url = serve(args.model, clips)
        try:
            seen = shoot(url, Path(args.out), args.steps, args.frames)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
    print(seen)
    return seen


if __name__ == "__main__":
    main()
