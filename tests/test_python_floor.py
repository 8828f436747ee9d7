"""The oldest Python pyproject.toml promises (`requires-python`) can run the code: every file
parses with that version's grammar, and no standard-library module newer than it is imported
(tomllib, which reads training configs, is 3.11+: the promise was once 3.10)."""

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Standard-library modules added after 3.8, with the version that added them.
NEWER_STDLIB = {"zoneinfo": (3, 9), "graphlib": (3, 9), "tomllib": (3, 11), "wsgiref.types": (3, 11)}


def promised_floor() -> tuple[int, int]:
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]
    m = re.fullmatch(r">=\s*(\d+)\.(\d+)", spec.strip())
    assert m, f"requires-python {spec!r} is not a plain '>=X.Y' floor"
    return int(m[1]), int(m[2])


def python_files() -> list[Path]:
    return sorted(p for d in ("src", "tests", "bench", "tools") for p in (ROOT / d).rglob("*.py"))


def test_every_file_parses_with_the_grammar_of_the_promised_floor():
    floor = promised_floor()
    for path in python_files():
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=floor)


def test_no_standard_library_module_newer_than_the_floor_is_imported():
    floor = promised_floor()
    too_new = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            too_new += [f"{path.relative_to(ROOT)}: {n} needs {NEWER_STDLIB[n]}" for n in names
                        if n in NEWER_STDLIB and NEWER_STDLIB[n] > floor]
    assert not too_new, too_new


def test_this_interpreter_is_within_the_promise():
    assert sys.version_info[:2] >= promised_floor()
