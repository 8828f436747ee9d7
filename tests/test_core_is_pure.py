"""lorastudio.core must stay importable without torch, diffusers or transformers.

The CLI, the API schema and the tests of pure logic import core; pulling a multi-second GPU
framework in there would slow every command and break installs without torch. Modules are
discovered with pkgutil so a core module added later is checked without editing this file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lorastudio.core

HEAVY = ("torch", "diffusers", "transformers")

# Runs in a fresh interpreter: the test process itself may already have torch loaded.
_PROBE = """
import importlib, json, pkgutil, sys
heavy = set(sys.argv[1].split(","))
import lorastudio.core as core
report = {"modules": [], "culprits": {}, "errors": {}}
for info in pkgutil.walk_packages(core.__path__, core.__name__ + "."):
    before = {m.split(".")[0] for m in sys.modules}
    report["modules"].append(info.name)
    try:
        importlib.import_module(info.name)
    except Exception as exc:
        report["errors"][info.name] = f"{type(exc).__name__}: {exc}"
    pulled = sorted(heavy & ({m.split(".")[0] for m in sys.modules} - before))
    if pulled:
        report["culprits"][info.name] = pulled
report["loaded"] = sorted(heavy & {m.split(".")[0] for m in sys.modules})
print(json.dumps(report))
"""


def _probe() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, ",".join(HEAVY)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    assert done.returncode == 0, f"importing lorastudio.core modules failed:\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def _modules_on_disk() -> set[str]:
    root = Path(lorastudio.core.__file__).parent
    found = set()
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            found.add(".".join(("lorastudio.core", *parts)))
    return found


def test_core_modules_do_not_import_heavy_frameworks():
    report = _probe()
    # Guards against the probe silently checking nothing (e.g. a broken package path).
    assert "lorastudio.core.prompt_syntax" in report["modules"]
    assert _modules_on_disk() <= set(report["modules"]), "pkgutil missed a core module"
    assert report["errors"] == {}, f"core modules that fail to import: {report['errors']}"
    assert report["culprits"] == {}, f"core modules importing heavy frameworks: {report['culprits']}"
    assert report["loaded"] == []
