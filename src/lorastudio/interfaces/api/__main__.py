"""`python -m lorastudio.interfaces.api`: the server without the typer CLI (tests, benches, services)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from lorastudio.core.settings import default_models_dir

    ap = argparse.ArgumentParser(prog="python -m lorastudio.interfaces.api", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--models-dir", type=Path, default=default_models_dir(os.environ))
    ap.add_argument("--outdir", type=Path, default=Path("outputs"))
    ap.add_argument("--projects-dir", type=Path, default=Path("projects"))
    ap.add_argument("--device", default="auto")
    # Also read from the environment so a password need not appear in the process list.
    ap.add_argument("--api-auth", default=os.environ.get("LORASTUDIO_API_AUTH"))
    ap.add_argument("--webhook-host", action="append", default=[], help="host allowed as a webhook target")
    ap.add_argument("--dataset-root", action="append", default=[], type=Path,
                    help="folder whose datasets may be named by path in POST /v1/trainings")
    ap.add_argument("--max-generation-work", type=int, default=None,
                    help="refuse txt2img above steps*width*height*images")
    args = ap.parse_args(argv)

    from lorastudio.core.errors import LorastudioError
    from lorastudio.core.params import build_model
    from lorastudio.core.settings import StudioSettings
    from lorastudio.interfaces.api.server import run_server
    from lorastudio.interfaces.api.state import ApiLimits

    try:
        settings = build_model(StudioSettings, dict(models_dir=args.models_dir, outdir=args.outdir,
                                                    projects_dir=args.projects_dir, device=args.device))
        run_server(settings, host=args.host, port=args.port, api_auth=args.api_auth or None,
                   webhook_hosts=args.webhook_host, dataset_roots=args.dataset_root,
                   limits=ApiLimits(max_generation_work=args.max_generation_work))
    except LorastudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
