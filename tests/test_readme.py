"""The README's Python API block runs as written, on the bundled base, in an empty folder."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_api_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


def test_the_python_api_block_runs_as_written(tmp_path, monkeypatch):
    from lorastudio.training.dataset.fixtures import draw_sticker_dataset

    code = python_api_block()
    assert len(code.strip().splitlines()) <= 14  # "a dozen lines": imports and six statements
    monkeypatch.chdir(tmp_path)
    draw_sticker_dataset(tmp_path / "my-stickers", n=4, trigger="DeltamonStamp", seed=0, size=64)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    path, hashes = printed.getvalue().strip().split(" ", 1)
    assert (tmp_path / path).is_file() and Path(path).parts[:2] == ("outputs", "txt2img-images")
    assert re.fullmatch(r"DeltamonStamp: [0-9a-f]{12}", hashes), hashes
    assert (tmp_path / "models" / "Lora" / "DeltamonStamp.safetensors").read_bytes() == \
        (tmp_path / "projects" / "DeltamonStamp" / "versions" / "v1" / "DeltamonStamp.safetensors").read_bytes()
