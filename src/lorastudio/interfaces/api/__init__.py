"""HTTP API: A1111-compatible `/sdapi/v1` and the `/v1/trainings` queue.

`create_app` and `run_server` are imported on first use, so importing a submodule (security,
a1111_models) does not pull in the engine.
"""

from __future__ import annotations

__all__ = ["create_app", "run_server"]


def __getattr__(name: str):
    if name in __all__:
        from lorastudio.interfaces.api import server

        return getattr(server, name)
    raise AttributeError(name)
