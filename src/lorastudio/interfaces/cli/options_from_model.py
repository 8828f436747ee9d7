"""Command-line options generated from a pydantic model's fields, and parsed values turned back
into that model: one typed source per option set, so a new setting is one line in the model.

A field becomes an option named after it (`batch_size` -> `--batch-size`) with its type, its
`Field(description=...)` as the help text and its default shown. `json_schema_extra` tunes it:

    {"cli": "--sample-prompt"}          the flag, where it differs from the field name (documented flags stay)
    {"cli": ["--denoising-strength", "--strength"]}   several spellings
    {"cli": "install"}                  a bool's base name: --install/--no-install
    {"cli": False}                      no flag (the field is not a command-line setting)
    {"group": "Network"}                the help section the option is listed under
    {"cli_default": "the family's"}     what the help says the default is, where the model says None
    {"env": "LORASTUDIO_API_AUTH"}      also read from this environment variable

Bools are `--x/--no-x`, lists are repeatable, Literals are choices. Every option's parsed default is
None, so only what the user typed reaches the model (a TOML file's values are not overridden by
defaults), and validation and its messages stay the model's.

Importing this module imports neither torch nor the engines (`lorastudio --help` stays instant).
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import click
import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from typer.core import TyperCommand

DEFAULT_GROUP = "Options"


@dataclass(frozen=True)
class CliField:
    """How one model field appears on the command line."""

    name: str  # the model's field name, and the keyword the command receives
    flags: tuple[str, ...]  # e.g. ("--batch-size",) or ("--install/--no-install",)
    annotation: Any  # the Python type typer parses into
    help: str
    group: str
    show_default: str | None
    choices: tuple[str, ...] | None = None
    envvar: str | None = None  # read from the environment when the flag is not given

    @property
    def option(self) -> str:
        """The primary flag as a user types it (`--install` for a `--install/--no-install` pair)."""
        return self.flags[0].split("/")[0]


def _extra(info: FieldInfo) -> dict:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _base_type(tp: Any) -> Any:
    """The plain Python type inside `Annotated[...]` (constrained strings, ints)."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _cli_type(name: str, annotation: Any) -> tuple[Any, tuple[str, ...] | None, bool]:
    """(the type typer parses, the choices of a Literal, whether the option repeats)."""
    tp = _base_type(_strip_optional(annotation))
    origin = typing.get_origin(tp)
    if origin is Literal:
        return str, tuple(str(a) for a in typing.get_args(tp)), False
    if origin in (list, tuple, set, frozenset) and origin is not tuple:
        inner = _base_type(typing.get_args(tp)[0])
        return list[inner], None, True
    if origin is tuple:
        # fixed-size tuples (an RGB colour) are given as one text the model's validator parses
        return str, None, False
    if tp in (bool, int, float, str, Path):
        return tp, None, False
    raise TypeError(f"{name}: no command-line type for {annotation!r}; give the field json_schema_extra "
                    f"{{'cli': False}} or a simpler type")


def _default_text(info: FieldInfo) -> str | None:
    extra = _extra(info)
    if "cli_default" in extra:
        return str(extra["cli_default"])
    if info.default_factory is not None:
        value = info.default_factory()
    elif info.is_required():
        return None
    else:
        value = info.default
    if value is None or value == [] or value == "":
        return None
    if isinstance(value, bool):
        return None  # the --x/--no-x pair's help says which one applies
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def model_fields_for_cli(model: type[BaseModel], *, include: "typing.Iterable[str] | None" = None,
                         exclude: "typing.Iterable[str]" = (), group: str | None = None,
                         shown_defaults: "dict[str, str] | None" = None) -> list[CliField]:
    """The command-line view of `model`'s fields, in the model's order. `shown_defaults` says what
    a command does when an option is left out, where that differs from the model's default (the
    size of an img2img is the init image's)."""
    wanted = None if include is None else list(include)
    skip = set(exclude)
    names = wanted if wanted is not None else list(model.model_fields)
    out = []
    for name in names:
        info = model.model_fields[name]
        extra = _extra(info)
        if name in skip or extra.get("cli", True) is False:
            continue
        tp, choices, repeats = _cli_type(f"{model.__name__}.{name}", info.annotation)
        spelled = extra.get("cli")
        spellings = [spelled] if isinstance(spelled, str) else list(spelled or [])
        if tp is bool:
            base = (spellings[0] if spellings else name.replace("_", "-")).lstrip("-")
            flags: tuple[str, ...] = (f"--{base}/--no-{base}",)
            default = None if info.is_required() else info.default
            shown = extra.get("cli_default", {True: f"--{base}", False: f"--no-{base}"}.get(default))
        else:
            flags = tuple(spellings) if spellings else ("--" + name.replace("_", "-"),)
            shown = _default_text(info)
        shown = (shown_defaults or {}).get(name, shown)
        help_text = (info.description or "") + (" (repeatable)" if repeats else "")
        out.append(CliField(name=name, flags=flags, annotation=tp, help=help_text.strip(),
                            group=group or extra.get("group", DEFAULT_GROUP), show_default=shown, choices=choices,
                            envvar=extra.get("env")))
    # the model may order its help sections: model_config json_schema_extra {"cli_groups": [...]}
    order = list((model.model_config.get("json_schema_extra") or {}).get("cli_groups", []))
    out.sort(key=lambda f: order.index(f.group) if f.group in order else len(order))
    return out


def _typer_parameter(field: CliField) -> inspect.Parameter:
    # typer turns a Literal into click's Choice (the choices are then listed in the help)
    annotation = Optional[Literal[field.choices] if field.choices else field.annotation]
    inner = typing.get_args(field.annotation)
    metavar = f"<{inner[0].__name__.lower()}>" if inner else None  # not "<list[int]>": the option takes one value
    option = typer.Option(None, *field.flags, help=field.help, rich_help_panel=field.group, metavar=metavar,
                          envvar=field.envvar,
                          show_default=field.show_default if field.show_default is not None else False)
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def with_model_options(*sources: "tuple[str, list[CliField]]") -> Callable[[Callable], Callable]:
    """Decorate a typer command `f(..., <dest>: dict, ...)`: each `(dest, fields)` source adds its
    fields as options, and `f` receives under `dest` the dict of the values the user gave
    (field name -> value; options left out are absent)."""

    def decorate(f: Callable) -> Callable:
        own = inspect.signature(f, eval_str=True)
        dests = {dest for dest, _ in sources}
        missing = dests - set(own.parameters)
        if missing:
            raise TypeError(f"{f.__name__} has no parameter {sorted(missing)} to receive the options")
        kept = [p for p in own.parameters.values() if p.name not in dests]
        taken = {p.name for p in kept}
        added: dict[str, str] = {}  # parameter name -> destination
        params = list(kept)
        for dest, fields in sources:
            for field in fields:
                if field.name in taken:
                    raise TypeError(f"{f.__name__}: option {field.name!r} is given twice")
                taken.add(field.name)
                added[field.name] = dest
                params.append(_typer_parameter(field))
        # typer reads keyword-only and positional parameters alike; keep arguments first
        params.sort(key=lambda p: p.kind == inspect.Parameter.KEYWORD_ONLY)
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD
                  else p for p in params]

        @functools.wraps(f)
        def wrapper(**kwargs):
            given: dict[str, dict] = {dest: {} for dest in dests}
            for name, dest in added.items():
                value = kwargs.pop(name, None)
                if value is not None and value != [] and value != ():
                    given[dest][name] = list(value) if isinstance(value, (list, tuple)) else value
            return f(**kwargs, **given)

        wrapper.__signature__ = inspect.Signature(params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__  # typer must see the generated signature, not f's
        return wrapper

    return decorate


class GroupedCommand(TyperCommand):
    """Help with one section per option group (click's plain formatting: `rich_markup_mode=None`
    keeps A1111's `[word]` syntax visible in help texts)."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        arguments: list = []
        groups: dict[str, list] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                arguments.append(record)
            else:
                groups.setdefault(getattr(param, "rich_help_panel", None) or DEFAULT_GROUP, []).append(record)
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        # ungrouped options (--models-dir, --verbose, --help) come last, after the model's groups
        for name in sorted(groups, key=lambda g: g == DEFAULT_GROUP):
            with formatter.section(name):
                formatter.write_dl(groups[name])
