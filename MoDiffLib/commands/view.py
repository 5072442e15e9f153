"""``modiff view``: the cine and its puncture plan in a web browser (trame / trame-slicer).

Serves a local web app: three slice views and a 3D view of the cine (rendered by slicer-core, as
in Slicer), play / pause and a frame slider, the path, the moving target and the risk structures
per frame, the gating window on a timeline and the planning curves. ``CINE`` is a cine file or a
folder holding one (``modiff view demo-out``); the plan and the risk label map are found beside it
unless given (see :mod:`MoDiffLib.web.inputs`).

It binds to 127.0.0.1 unless ``--host`` says otherwise, prints the URL, needs no network (every
asset is served by this process) and runs until stopped: Ctrl-C or SIGTERM ends it as every
``modiff`` command ends on a cancel (``modiff: cancelled: ...``, exit status 130).

The browser parts are the optional extra ``web`` (``pip install -e '.[web]'``, and slicer-layer-dm
without its dependencies); without them the command says how to install them. Nothing of trame
is imported before :func:`run` gets that far.
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import os
import sys

NAME = "view"
HELP = "view a cine and its puncture plan in a web browser (needs the optional extra 'web', see the README)"

#: The port ``--port`` defaults to (trame's usual one).
DEFAULT_PORT = 8080
DEFAULT_HOST = "127.0.0.1"
WEB_EXTRA_MESSAGE = ("modiff view needs the web extra (trame): pip install -e '.[web]' in the MoDiff folder, "
                     "then pip install --no-deps slicer-layer-dm (README: Web viewer)")
#: slicer-layer-dm's wheels pin an older slicer-core than MoDiff's; installed without its
#: dependencies it works with slicer-core 5.13 (checked: the viewer and its browser test).
LAYER_DM_MESSAGE = ("modiff view needs slicer-layer-dm (trame-slicer's views): "
                    "pip install --no-deps slicer-layer-dm")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to 65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to 65535, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cine", metavar="CINE",
                        help="the cine (.seq.nrrd or 4D .nii.gz) or a folder holding one, e.g. demo-out")
    parser.add_argument("--plan", metavar="PLAN_DIR",
                        help="the folder written by modiff plan (default: CINE's name + '-plan' beside it, or the "
                             "plan folder inside a CINE folder)")
    parser.add_argument("--labels", metavar="LABELS",
                        help="risk structure label map (frame 0, or a .seq.nrrd per frame) on the cine's grid "
                             "(default: the one the plan used, or labels.seq.nrrd beside the cine)")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT, metavar="P",
                        help=f"port to serve on (default: {DEFAULT_PORT}; 0: any free port)")
    parser.add_argument("--host", default=DEFAULT_HOST, metavar="ADDRESS",
                        help=f"address to bind (default: {DEFAULT_HOST}, this computer only; 0.0.0.0 serves the "
                             "network, without any access control)")
    parser.add_argument("--no-volume-rendering", action="store_true",
                        help="start with the 3D view showing the structures and the path only (faster on slow machines)")


def check_web_extra() -> None:
    """Raise InputError (one line, with the install command) unless the web extra can be imported."""
    from ..errors import InputError

    if any(importlib.util.find_spec(name) is None for name in ("trame", "trame_slicer", "trame_vuetify", "slicer")):
        raise InputError(WEB_EXTRA_MESSAGE)
    if importlib.util.find_spec("slicer_layer_dm") is None:
        raise InputError(LAYER_DM_MESSAGE)


def run(args: argparse.Namespace) -> int:
    from ..errors import Cancelled, InputError
    from ..web.inputs import find_cine, load_inputs

    find_cine(args.cine)  # a wrong path is reported before anything else
    check_web_extra()
    inputs = load_inputs(args.cine, args.plan, args.labels)
    for note in inputs.notes:
        print(f"modiff view: note: {note}", file=sys.stderr)

    # trame would parse this process's command line (or $TRAME_ARGS, whose --host would override
    # ours) as its own options: give it none; and keep wslink's start-up banner off stdout, which
    # prints the URL only.
    os.environ["TRAME_ARGS"] = ""
    os.environ["WSLINK_READY_MSG"] = ""
    from ..web.app import ViewerApp
    from ..web.state import ViewerState

    app = ViewerApp(ViewerState(inputs), volume_rendering=not args.no_volume_rendering)
    server = app.server

    def announce(**_):
        host = args.host if args.host not in ("0.0.0.0", "::") else "localhost"
        host = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL
        print(f"modiff view: open http://{host}:{server.port}/ in a browser (Ctrl-C stops the viewer)", flush=True)

    server.controller.on_server_ready.add(announce)
    try:
        # timeout=0: no shutdown when the last tab closes; the viewer runs until it is stopped.
        # aiohttp's own signal handlers stop it gracefully on SIGINT / SIGTERM.
        server.start(port=args.port, host=args.host, open_browser=False, show_connection_info=False,
                     disable_logging=True, timeout=0)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise InputError(f"port {args.port} on {args.host} is in use; choose another with --port "
                             "(--port 0 picks a free one)") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise InputError(f"cannot bind to {args.host}: no such address on this computer (--host)") from None
        raise
    # the server returns only when a signal stopped it (no timeout): the CLI's cancel
    raise Cancelled("the viewer was stopped")
