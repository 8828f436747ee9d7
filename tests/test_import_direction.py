"""Imports point inward: interfaces -> services -> engines -> models -> core.

Every module under src/lorastudio is parsed with `ast` (top-level and function-level imports
alike, so a lazy import cannot hide an upward dependency) and each `lorastudio.*` import is
checked against the layer graph stated in docs/ARCHITECTURE.md. Modules are discovered from
the source tree, so a package added later is checked (or refused, until it gets a layer).
"""

from __future__ import annotations

import ast
from pathlib import Path

import lorastudio

SRC = Path(lorastudio.__file__).parent

# Top-level package -> layer rank; a module may import its own package and lower ranks.
LAYERS = {
    "core": 0,
    "models": 1,
    # the engines, side by side
    "generation": 2, "training": 2, "lora": 2, "evaluation": 2,
    # tiny random models for tests, benches and the demo: built from models' format tables
    "testing": 2,
    "services": 3,
    "interfaces": 4,
}
# Imports between engines, each with its reason; every other engine -> engine import is refused.
ENGINE_EDGES = {
    ("generation", "lora"): "a prompt's <lora:...> tags and embeddings are applied before denoising",
    ("training", "generation"): "training previews are drawn by the txt2img code users generate with",
}
# Inside models/families/ a family file imports the protocol and the shared SD base, never another family.
FAMILY_SHARED = {"lorastudio.models.families.base", "lorastudio.models.families.stable_diffusion_base",
                 "lorastudio.models.families.registry"}


def _module_name(path: Path, root: Path = SRC) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path = SRC) -> list[tuple[int, str]]:
    """(line, absolute module) for every import of a lorastudio module in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from lorastudio.models import families` imports a submodule
            for a in node.names:
                sub = root.parent / f"{target}.{a.name}".replace(".", "/")
                if sub.is_dir() or sub.with_suffix(".py").exists():
                    found.append((node.lineno, f"{target}.{a.name}"))
    return [(line, t) for line, t in found if t == "lorastudio" or t.startswith("lorastudio.")]


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def allowed(importer: str, imported: str) -> bool:
    src, dst = _layer(importer), _layer(imported)
    if dst is None:
        return src is None  # only the package root may import the bare `lorastudio` (for __version__, any)
    if src is None or src == dst:
        return True
    if src not in LAYERS or dst not in LAYERS:
        return False
    if LAYERS[src] == LAYERS[dst] == 2:
        return (src, dst) in ENGINE_EDGES
    return LAYERS[dst] < LAYERS[src]


def test_every_package_has_a_layer():
    packages = {p.parent.name for p in SRC.glob("*/__init__.py")}
    assert packages == set(LAYERS), f"give these packages a layer: {sorted(packages ^ set(LAYERS))}"


def test_imports_point_inward():
    wrong = []
    for path in _sources():
        importer = _module_name(path)
        for line, imported in _imports(path):
            if imported == "lorastudio":
                continue  # `from lorastudio import __version__`: the package root holds no code of a layer
            if not allowed(importer, imported):
                wrong.append(f"{path.relative_to(SRC)}:{line} {importer} -> {imported}")
    assert wrong == [], "imports against the layer graph (docs/ARCHITECTURE.md):\n" + "\n".join(wrong)


def test_family_files_do_not_import_each_other():
    wrong = []
    for path in sorted((SRC / "models" / "families").glob("*.py")):
        if path.name == "registry.py":
            continue  # the registry lists the families; it is no family file
        importer = _module_name(path)
        for line, imported in _imports(path):
            if imported.startswith("lorastudio.models.families.") and imported not in FAMILY_SHARED \
                    and imported != importer:
                wrong.append(f"{path.name}:{line} imports {imported}")
    assert wrong == [], "a family file is no helper module of another:\n" + "\n".join(wrong)


def test_the_checker_sees_imports_inside_functions_and_relative_ones(tmp_path):
    # The rule must be able to fail: upward imports hidden in a function, or written relative, are found.
    root = tmp_path / "lorastudio"
    (root / "training").mkdir(parents=True)
    (root / "training" / "api.py").write_text("")
    probe = root / "models" / "probe.py"
    probe.parent.mkdir()
    probe.write_text("def f():\n    from lorastudio.generation.engine import GenerationEngine\n"
                     "    from ..training import api\n")
    assert [t for _, t in _imports(probe, root)] == [
        "lorastudio.generation.engine", "lorastudio.training", "lorastudio.training.api"]
    assert not allowed("lorastudio.models.probe", "lorastudio.generation.engine")
    assert not allowed("lorastudio.models.probe", "lorastudio.training.api")
    assert not allowed("lorastudio.lora.activation", "lorastudio.training.api")  # engine -> engine, not listed
    assert not allowed("lorastudio.core.params", "lorastudio.models.loader")
    assert allowed("lorastudio.training.sampling", "lorastudio.generation.txt2img")
    assert allowed("lorastudio.interfaces.cli.app", "lorastudio.models.catalog")
