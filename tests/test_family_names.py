"""Family knowledge lives in models/families/: no family name in code logic anywhere else.

Callers ask the family (`family.denoiser_name`, `family.sampler_label(...)`, ...) instead of
testing "is this FLUX?". Every module outside models/families/ is parsed with `ast`; its
identifiers (names, attributes, functions, arguments, imported modules) and string constants
(docstrings and comments excepted: they explain, they do not decide) must not name a family.
The few places that must are allow-listed below, each with its reason.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import lorastudio

SRC = Path(lorastudio.__file__).parent

# "sd1", "sd15", "SDXL", "flux", "FLUX.1", `is_flux`, `tiny_sdxl`...; not "influx" or "fluxes".
FAMILY_WORD = re.compile(r"(?<![a-z0-9])(sd1|sdxl|flux)(?![a-z])", re.IGNORECASE)

ALLOWED = {
    "models/families/": "the families themselves",
    "models/formats/": "each family's key-name and config tables for its original single-file layouts: data the "
                       "family files (and the loader's pre-load notes) read, one file per format",
    "models/controlnet/sd_controlnet.py": "the original ControlNet single-file layouts (SD 1.x and SDXL key "
                                          "markers and conversion), which the families' ControlNet methods call: "
                                          "format data like models/formats/",
    "testing/": "tiny random SD 1.x / SDXL / FLUX.1 models in their real on-disk layouts, one builder per family",
    "interfaces/cli/app.py": "help text naming the supported families and FLUX.1's distilled-guidance option",
    "interfaces/cli/img2img_cmd.py": "help text of FLUX.1's distilled-guidance option",
    "interfaces/cli/worker_cmd.py": "help text of --families, which takes the families' registry names",
    "interfaces/web/training_aids.py": "an OpenAPI field description listing the registry names",
    "services/jobs/models.py": "a field description giving registry names as examples",
    "services/publish/known_bases.py": "data: the published base files (SHA-256, Hub id, licence) a model card "
                                       "names; nothing branches on a family",
    "services/publish/card.py": "the model card's sentence naming the known published bases",
}


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                ids.add(id(first.value))
    return ids


def family_names_in(source: str) -> list[tuple[int, str]]:
    """(line, text) for every identifier or string constant of `source` that names a model family."""
    tree = ast.parse(source)
    docs = _docstring_nodes(tree)
    hits = []
    for node in ast.walk(tree):
        texts: list[str] = []
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            texts = [node.value]
        elif isinstance(node, ast.Name):
            texts = [node.id]
        elif isinstance(node, ast.Attribute):
            texts = [node.attr]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            texts = [node.name]
        elif isinstance(node, ast.arg):
            texts = [node.arg]
        elif isinstance(node, ast.keyword) and node.arg:
            texts = [node.arg]
        elif isinstance(node, ast.alias):
            texts = [node.name, node.asname or ""]
        elif isinstance(node, ast.ImportFrom) and node.module:
            texts = [node.module]
        for text in texts:
            # `_` and `.` separate words in identifiers and module paths (is_flux, formats.flux_checkpoint)
            if FAMILY_WORD.search(text.replace("_", " ").replace(".", " ")):
                hits.append((getattr(node, "lineno", 0), text[:80]))
    return sorted(set(hits))


def _allowed(rel: str) -> bool:
    return any(rel == key or (key.endswith("/") and rel.startswith(key)) for key in ALLOWED)


def test_no_family_name_outside_the_family_files():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if _allowed(rel):
            continue
        found += [f"{rel}:{line} {text!r}" for line, text in family_names_in(path.read_text(encoding="utf-8"))]
    assert found == [], "family names outside models/families/ (ask the family instead):\n" + "\n".join(found)


def test_every_allow_list_entry_still_exists():
    for key in ALLOWED:
        assert (SRC / key).exists(), f"allow-listed {key} is gone: drop it from ALLOWED"


def test_the_scan_finds_family_branches_and_ignores_explanations():
    code = '''
"""Docstrings may say SDXL and FLUX."""
def f(pipe, family):
    """So may this one: sd1."""
    # and comments: flux
    if family.name == "flux":
        return pipe.unet
    is_sdxl = "SDXL" in family.title
    from lorastudio.models.formats.flux_checkpoint import detect_flux_layout
    return influx(is_sdxl)
'''
    assert family_names_in(code) == [
        (6, "flux"), (8, "SDXL"), (8, "is_sdxl"),
        (9, "detect_flux_layout"), (9, "lorastudio.models.formats.flux_checkpoint"), (10, "is_sdxl")]
