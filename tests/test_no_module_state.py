"""No work and no mutable state at import time; only entry points read the environment.

A value computed when a module is imported (a host name, a cache dictionary, a setting read
from os.environ) is shared by every caller of the process and fixed before any settings
exist. Settings are built at the entry point (interfaces/) and passed down instead. Checked
with `ast` on every module outside interfaces/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lorastudio

SRC = Path(lorastudio.__file__).parent

# Calls allowed at module level: they build immutable values or declarations, and read nothing.
PURE_CONSTRUCTORS = {
    "re.compile", "frozenset", "tuple", "Path", "logging.getLogger", "TypeVar", "Version", "ConfigDict",
    "Field", "namedtuple", "MappingProxyType", "object",
    "KnownBase",  # a frozen dataclass row of the published-base table
    "Slider",  # a frozen dataclass: a ControlNet preprocessor slider's bounds

}
MUTABLE_CALLS = {"dict", "list", "set", "defaultdict", "OrderedDict", "WeakKeyDictionary", "WeakValueDictionary",
                 "weakref.WeakKeyDictionary", "weakref.WeakValueDictionary", "collections.defaultdict"}


def problems_in(source: str) -> list[str]:
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        # os.environ / os.getenv anywhere: the environment is the entry point's to read
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv") \
                and isinstance(node.value, ast.Name) and node.value.id == "os":
            found.append(f"{node.lineno}: reads os.{node.attr}")
    for stmt in tree.body:
        if not isinstance(stmt, (ast.Assign, ast.AnnAssign)) or stmt.value is None:
            continue
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        if names == ["__all__"]:
            continue
        value = stmt.value
        constant_name = all(n.isupper() for n in names)
        if isinstance(value, ast.Call):
            func = ast.unparse(value.func)
            if func in ("dict", "list", "set") and constant_name:
                continue  # `TABLE = dict(...)`: an UPPER_CASE table, as the literals below
            if func in MUTABLE_CALLS or func not in PURE_CONSTRUCTORS:
                found.append(f"{stmt.lineno}: {', '.join(names)} = {func}(...) runs at import")
        elif isinstance(value, (ast.Dict, ast.List, ast.Set)) and not constant_name:
            # UPPER_CASE tables are constants by convention; a lower-case container is state
            found.append(f"{stmt.lineno}: {', '.join(names)} is a module-level mutable container")
    return found


def test_no_import_time_state_outside_the_entry_points():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("interfaces/") or rel == "testing/postgres_server.py":
            # entry points; and the test suite's PostgreSQL starter, which finds the server's
            # binaries ($LORASTUDIO_PG_BINDIR) the way a test entry point does
            continue
        found += [f"{rel}:{p}" for p in problems_in(path.read_text(encoding="utf-8"))]
    assert found == [], "module-level state or environment reads:\n" + "\n".join(found)


def test_the_scan_finds_what_it_forbids():
    source = """
import os, socket, weakref
HOST = socket.gethostname()
_CACHE = weakref.WeakKeyDictionary()
seen = []
TABLE = {"a": 1}
CONFIG = dict(a=1)
MODELS = os.environ.get("X", "models")
PATTERN = re.compile("x")
state = dict()
def f():
    return os.getenv("Y")
"""
    assert problems_in(source) == [
        "8: reads os.environ", "12: reads os.getenv",
        "3: HOST = socket.gethostname(...) runs at import",
        "4: _CACHE = weakref.WeakKeyDictionary(...) runs at import",
        "5: seen is a module-level mutable container",
        "8: MODELS = os.environ.get(...) runs at import",
        "10: state = dict(...) runs at import",
    ]
