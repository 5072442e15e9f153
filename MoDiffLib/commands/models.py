"""``modiff models``: list the registered models, where they are installed, or download one."""

from __future__ import annotations

import argparse

NAME = "models"
HELP = "list registered models and where they are installed; --download NAME fetches one (sha256-verified)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--download", metavar="NAME", default=None, help="download this model into the user cache")


def run(args: argparse.Namespace) -> int:
    from ..errors import MoDiffError
    from ..progress import ProgressPrinter
    from ..registry import download_model, list_models, resolve_model, user_cache_dir

    if args.download:
        printer = ProgressPrinter("bar")
        try:
            folder = download_model(args.download, progress=printer)
        finally:
            printer.close()
        print(f"downloaded and verified '{args.download}' into {folder}")
        return 0
    models = list_models()
    if not models:
        print("no models are registered")
    for entry in models:
        try:
            where = str(resolve_model(entry.name)[0])
        except MoDiffError as e:
            where = f"not available: {e}"
        amp = f", strength {entry.amplitude['name']}" if entry.amplitude else ""
        print(f"{entry.name} {entry.version} ({entry.kind}, {entry.modality}, up to {entry.max_frames} frames{amp})\n"
              f"    {entry.title}\n    {where}")
    print(f"user cache: {user_cache_dir()}")
    return 0
