"""`kinema serve`: the web UI (Gradio) on this machine.

    kinema serve                                   # http://127.0.0.1:7860, the shipped model
    kinema serve --model runs/default/model --output-dir clips --max-queue 4
    kinema serve --host 0.0.0.0 --auth alice:PASSWORD   # reachable from the network: always with --auth

Every argument is checked before anything is served (a port in use, a malformed --auth, an output
folder that cannot be written, a bad model folder: one line, exit status 2); gradio is imported only
then. Jobs run one at a time on one model loaded once; clips, GIFs and sidecars go to --output-dir.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
import tempfile
from pathlib import Path

from .errors import KinemaError, require

MAX_UPLOAD = "256mb"  # what the page accepts per file
LOCAL_HOSTS = ("localhost",)


def add_parser(sub, fmt) -> None:
    """The `serve` subcommand (imports nothing heavy: `kinema --help` stays fast)."""
    from .cli import add_model_options, int_at_least

    s = sub.add_parser("serve", help="the web UI: every driver in the browser", formatter_class=fmt,
                       description="Serve the web UI (Gradio). Jobs queue and run one at a time on one model.")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on; another than this machine's loopback "
                                                       "makes the page reachable from the network (use --auth)")
    s.add_argument("--port", type=port_number, default=7860, help="TCP port")
    s.add_argument("--auth", default=None, metavar="USER:PASS", help="require this user name and password")
    s.add_argument("--max-queue", type=int_at_least(1), default=8, help="jobs that may wait; more are refused")
    s.add_argument("--output-dir", default="kinema-outputs", help="where clips, GIFs and sidecars are written "
                                                                  "(the History tab lists it)")
    add_model_options(s)
    s.set_defaults(func=cmd_serve)


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1..65535, got {port}")
    return port


#################################################################################
#                           Checks before serving                               #
#################################################################################


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """USER:PASS -> (user, password); the password is never echoed in an error."""
    if text is None:
        return None
    user, colon, password = text.partition(":")
    require(colon and user.strip() and password and user == user.strip() and "\n" not in text,
            "--auth must be USER:PASS with a user name and a password, e.g. --auth alice:PASSWORD")
    return user, password


def check_output_dir(path: str) -> Path:
    """The output folder, or the folder it will be made in, proven writable (by a file made and removed there)."""
    out = Path(path).expanduser().absolute()
    existing = next(p for p in (out, *out.parents) if p.exists())
    require(existing.is_dir(), f"cannot write to --output-dir {path}: {existing} is not a folder; pass a folder you can write")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".kinema-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise KinemaError(f"cannot write to --output-dir {path}: {e.strerror or e}; pass a folder you can write") from None
    return out


def check_port(host: str, port: int) -> None:
    """Refuse a port that is taken (or an address this machine does not have) before anything is served."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise KinemaError(f"--host {host!r} is not an address of this machine ({e}); use 127.0.0.1 or 0.0.0.0") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: a closing socket is no obstacle
        try:
            s.bind(address)
        except OSError as e:
            if e.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
                raise KinemaError(f"port {port} on {host} is in use; pass another --port or stop what uses it") from None
            raise KinemaError(f"cannot listen on {host}:{port}: {e.strerror or e}; check --host and --port") from None


def is_loopback(host: str) -> bool:
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#################################################################################
#                                    Command                                    #
#################################################################################


def cmd_serve(args) -> None:
    """Check every argument, describe the model, then build the page and serve it until Ctrl-C."""
    import importlib.util

    from . import jobs
    from .models.family import describe

    require(importlib.util.find_spec("gradio") is not None, "the web UI needs gradio: pip install 'kinema[ui]'")
    auth = parse_auth(args.auth)
    check_port(args.host, args.port)
    out = check_output_dir(args.output_dir)
    placement = dict(device=args.device, dtype=args.dtype, attention=args.attention, offload=args.offload,
                     threads=args.threads, lora=args.lora, lora_strict=args.lora_strict)
    info = describe(args.model)  # a bad model folder is refused here, before serving
    jobs.placement_for(info, **placement)  # a device or backend this machine lacks, or a LoRA of another model, too
    if not is_loopback(args.host) and auth is None:
        print(f"kinema: warning: serving on {args.host} without --auth: anyone who can reach this machine can run "
              "jobs and see the clips; pass --auth USER:PASS", file=sys.stderr)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KinemaError(f"cannot create --output-dir {args.output_dir}: {e.strerror or e}; pass a folder you can write") from None
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves this machine
    from .ui.app import build, upload_dirs
    from .ui.runner import Runner

    model = None if args.model is None else str(Path(args.model).expanduser().resolve())  # for the command shown
    runner = Runner(info, out, model, placement, upload_dirs(), max_queue=args.max_queue)
    demo = build(runner, info)
    print(f"kinema: serving {info.name} on http://{args.host}:{args.port} (clips in {out}; Ctrl-C stops)", file=sys.stderr)
    demo.launch(server_name=args.host, server_port=args.port, auth=auth, share=False, max_file_size=MAX_UPLOAD,
                allowed_paths=[str(out)], show_error=True, quiet=True, ssr_mode=False, pwa=False, mcp_server=False,
                run_history=False, inbrowser=False)
