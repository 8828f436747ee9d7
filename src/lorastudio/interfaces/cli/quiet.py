"""What the third-party libraries may print on the terminal, decided once per command.

diffusers, transformers, huggingface_hub, accelerate and peft write progress bars ("Loading
pipeline components"), advice for library developers ("should be kept in float32", "No LoRA
keys associated to CLIPTextModel", torchvision notices) and deprecation warnings to stderr. A
user of the command line cannot act on any of it, so a command runs inside `library_output()`:
the libraries' warnings and bars are off for its duration and restored afterwards (nothing is
changed at import time). Their errors still show. `--verbose` turns their logs on instead.

Importing this module imports no torch; the libraries' logging modules are imported when a
command enters the context, which happens only in commands that load models anyway.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import typer

VERBOSE_HELP = "Show the libraries' own logs, warnings and progress bars (diffusers, transformers...)"

# Library loggers whose warnings are silenced (their children inherit the level).
_LIBRARY_LOGGERS = ("diffusers", "transformers", "huggingface_hub", "accelerate", "peft", "torch")


def verbose_option():
    return typer.Option(False, "--verbose", help=VERBOSE_HELP)


@contextmanager
def library_output(verbose: bool = False) -> Iterator[None]:
    """Quiet (default) or verbose library output for the duration of one command."""
    _configure_library_loggers()
    level = logging.INFO if verbose else logging.ERROR
    with ExitStack() as stack:
        for name in _LIBRARY_LOGGERS:
            logger = logging.getLogger(name)
            stack.callback(logger.setLevel, logger.level)
            logger.setLevel(level)
        if not verbose:
            stack.enter_context(_progress_bars_off())
            stack.enter_context(warnings.catch_warnings())
            # FutureWarning / DeprecationWarning / UserWarning from torch, diffusers (steps_offset...),
            # transformers: advice for the people who call those libraries, which is us.
            warnings.simplefilter("ignore")
        yield


def _configure_library_loggers() -> None:
    # Each library sets its root logger's level when its logging module is first imported;
    # importing them first means the level set here is not overwritten afterwards.
    import diffusers.utils.logging  # noqa: F401
    import huggingface_hub.utils.logging  # noqa: F401
    import transformers.utils.logging  # noqa: F401


@contextmanager
def _progress_bars_off() -> Iterator[None]:
    import huggingface_hub.utils as hf_utils
    from diffusers.utils import logging as d_logging
    from transformers.utils import logging as t_logging

    restore = []
    if d_logging.is_progress_bar_enabled():
        d_logging.disable_progress_bar()
        restore.append(d_logging.enable_progress_bar)
    if t_logging.is_progress_bar_enabled():
        t_logging.disable_progress_bar()
        restore.append(t_logging.enable_progress_bar)
    if not hf_utils.are_progress_bars_disabled():
        hf_utils.disable_progress_bars()
        restore.append(hf_utils.enable_progress_bars)
    try:
        yield
    finally:
        for undo in restore:
            undo()
