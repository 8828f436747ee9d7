"""The supported families, in probing order (most specific first)."""

from __future__ import annotations

from functools import cache

from lorastudio.models.families.base import ModelFamily


@cache
def families() -> tuple[ModelFamily, ...]:
    from lorastudio.models.families.flux import FluxFamily
    from lorastudio.models.families.sd1 import SD1Family
    from lorastudio.models.families.sdxl import SDXLFamily

    return (FluxFamily(), SDXLFamily(), SD1Family())


def family_by_name(name: str) -> ModelFamily:
    for fam in families():
        if fam.name == name:
            return fam
    raise KeyError(name)
