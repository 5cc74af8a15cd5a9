"""Command-line flags derived from a config dataclass: one Typer option per field, with the field's help text,
default and flag name (see :mod:`mulcot.train.config` for the metadata). A new training knob is one field there;
``train-assistant`` and ``distill`` show it from then on."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import Field
from typing import Annotated, Any, get_type_hints

import typer

from mulcot.core.settings import config_fields, default_of


def _cli_type(tp: Any, f: Field) -> Any:
    if "parse" in f.metadata:
        return str
    return tp


def _shown_default(f: Field) -> Any:
    value = default_of(f)
    if "parse" in f.metadata and isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return value


def _parameters(cls: type, skip: set[str]) -> list[tuple[inspect.Parameter, Callable[[dict], tuple[str, Any]]]]:
    """(parameter, reader) per field: the reader turns the parsed flags into (field, value)."""
    hints = get_type_hints(cls)
    out = []
    for f in config_fields(cls, cli=True):
        if f.name in skip:
            continue
        meta = f.metadata
        if meta.get("invert"):
            param = meta["flag"].lstrip("-").replace("-", "_")
            option = typer.Option(meta["flag"], help=meta["help"])
            p = inspect.Parameter(param, inspect.Parameter.KEYWORD_ONLY, default=False,
                                  annotation=Annotated[bool, option])
            out.append((p, lambda v, name=f.name, param=param: (name, not v[param])))
            continue
        tp = _cli_type(hints[f.name], f)
        shown = _shown_default(f)
        # a comma list shown with spaces ("teacher, assistant, ...") wraps at 80 columns instead of being cut
        listed = shown.replace(",", ", ") if isinstance(shown, str) and "," in shown else True
        if "flag" in meta:
            option = typer.Option(meta["flag"], help=meta["help"], show_default=listed)
        elif tp is bool and default_of(f) is False:  # a plain switch: --name (no --no-name, which only repeats it)
            option = typer.Option("--" + f.name.replace("_", "-"), help=meta["help"])
        else:
            option = typer.Option(help=meta["help"], show_default=listed)
        if meta.get("none_flag"):
            tp = str  # the value flag; the none flag sets None
        p = inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=_shown_default(f),
                              annotation=Annotated[tp, option])
        parse = meta.get("parse")

        def read(v: dict, name: str = f.name, parse: Callable | None = parse, none: Any = meta.get("none_flag")):
            value = v[name]
            if none and v[none[0].lstrip("-").replace("-", "_")]:
                value = None
            elif parse is not None and value is not None:
                value = parse(value)
            return name, value

        out.append((p, read))
        if meta.get("none_flag"):
            flag, help_text = meta["none_flag"]
            param = flag.lstrip("-").replace("-", "_")
            q = inspect.Parameter(param, inspect.Parameter.KEYWORD_ONLY, default=False,
                                  annotation=Annotated[bool, typer.Option(flag, help=help_text)])
            out.append((q, lambda v: ("", None)))
    return out


def config_options(cls: type, *, skip: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Add ``cls``'s fields as options to a Typer command, which receives them as ``options: dict`` (field name ->
    value, ready for ``cls(**options)``). Fields named in ``skip`` (or with ``cli=False``) are left out."""

    def decorate(fn: Callable) -> Callable:
        params = _parameters(cls, set(skip))
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name != "options"]
        positional = [p for p in own if p.default is inspect.Parameter.empty]
        optional = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p not in positional]
        # the command's own options first, then the config's, then --db/--json (last in every command's help)
        tail = [p for p in optional if p.name in ("db", "as_json")]
        head = [p for p in optional if p not in tail]
        new = sig.replace(parameters=[*positional, *head, *(p for p, _ in params), *tail])
        names = {p.name for p, _ in params}

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            values = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
            options = dict(read(values) for _, read in params)
            options.pop("", None)
            return fn(*args, options=options, **kwargs)

        command.__signature__ = new  # type: ignore[attr-defined]
        return command

    return decorate
