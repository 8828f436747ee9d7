"""A1111 prompt styles: `styles.csv` (name, prompt, negative_prompt) applied to a prompt.

The file and the merge rule are A1111's (modules/styles.py), so a user's styles.csv works
unchanged: a style text holding `{prompt}` has it replaced by the prompt; otherwise the style is
appended after ", " (empty parts dropped). Styles apply in the order given. A1111 silently skips
an unknown style name; here it is an error naming the style and the file, so a picture is never
made without the style that was asked for.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from lorastudio.core.errors import InvalidParameter


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str
    negative_prompt: str


def load_styles(path: Path) -> dict[str, PromptStyle]:
    """The styles in `path` by name ({} when the file does not exist, as A1111 starts)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f, skipinitialspace=True))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidParameter("styles file", str(path), f"cannot be read as A1111's styles.csv ({exc})") from None
    styles: dict[str, PromptStyle] = {}
    for row in rows:
        name = (row.get("name") or "").strip()
        if not name:
            continue
        # A1111 also reads the pre-2023 column name "text" for the prompt.
        styles[name] = PromptStyle(name, row.get("prompt") or row.get("text") or "", row.get("negative_prompt") or "")
    return styles


def merge_prompts(style_prompt: str, prompt: str) -> str:
    if "{prompt}" in style_prompt:
        return style_prompt.replace("{prompt}", prompt)
    return ", ".join(p for p in (prompt.strip(), style_prompt.strip()) if p)


def apply_styles(prompt: str, negative: str, names: list[str], styles: dict[str, PromptStyle],
                 source: str = "styles.csv") -> tuple[str, str]:
    for name in names:
        style = styles.get(name)
        if style is None:
            known = ", ".join(sorted(styles)) or "none"
            raise InvalidParameter("styles", name, f"no such style in {source}; known: {known}")
        prompt = merge_prompts(style.prompt, prompt)
        negative = merge_prompts(style.negative_prompt, negative)
    return prompt, negative
