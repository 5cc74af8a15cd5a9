"""Settings declared once: a stage's config is a dataclass whose fields carry their help text and their checks, and
everything else is derived from it — the command-line flags (:mod:`mulcot.cli.config_options`), the recipe
sections (:mod:`mulcot.pipeline.recipes`) and the validation every caller gets (a library caller, the CLI and a
recipe see the same one-line error).

Field metadata (``field_(default, help, **meta)``):

- ``help``: the flag's help text;
- ``section``: where a recipe sets it (``training``, ``model``, ``student``, ``dpo``, ``expand``, ``eval``); absent:
  set by the command or the pipeline itself (dataset, names, splits, folders);
- ``flag`` / ``invert``: a flag named differently from the field (``--two-pass`` sets ``single_pass`` False);
- ``none_flag``: a second flag that sets the field to None (``--no-dev``);
- ``parse``: a function from the flag's text to the value (``--task-weights 0.2,0.8``);
- ``choices``, ``min``, ``max``, ``above``: allowed values (``above``: strictly greater than);
- ``cli``: False keeps a field off the command line.

A config class that derives from :class:`Validated` checks every field in ``__post_init__`` and then runs its own
``check()`` for rules across fields.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, field, fields
from typing import Any

from mulcot.errors import MulcotError


class ConfigError(MulcotError):
    """A setting outside what its field allows (names the flag and what is allowed)."""


def field_(default: Any = MISSING, help: str = "", **meta: Any) -> Any:
    """A config field: its default and its metadata (see the module docstring)."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


def config_fields(cls: type, *, section: str | None = None, cli: bool | None = None) -> list[Field]:
    """The fields of a config class, optionally those of one recipe ``section`` or those on the command line."""
    out = []
    for f in fields(cls):
        if section is not None and f.metadata.get("section") != section:
            continue
        if cli is not None and f.metadata.get("cli", True) != cli:
            continue
        out.append(f)
    return out


def default_of(f: Field) -> Any:
    """A field's default value (its factory's product for lists and dicts)."""
    return f.default_factory() if f.default_factory is not MISSING else f.default  # type: ignore[misc]


def flag_name(f: Field) -> str:
    """How the command line spells the field (``--lr``, ``--two-pass``)."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def field_problem(f: Field, value: Any) -> str | None:
    """What is wrong with ``value`` for field ``f`` (``"must be at least 1, got 0"``), or None."""
    meta = f.metadata
    choices = meta.get("choices")
    if value is None:
        return None
    if choices and value not in choices:
        return f"is {value!r}; allowed: {', '.join(map(str, choices))}"
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    low, high, above = meta.get("min"), meta.get("max"), meta.get("above")
    if low is not None and high is not None and not low <= value <= high:
        return f"must be between {low} and {high}, got {value!r}"
    if low is not None and value < low:
        return f"must be at least {low}, got {value!r}"
    if high is not None and value > high:
        return f"must be at most {high}, got {value!r}"
    if above is not None and value <= above:
        return f"must be {'positive' if above == 0 else f'above {above}'}, got {value!r}"
    return None


def validate(config: Any) -> None:
    """Check every field of a config dataclass against its metadata; raises :class:`ConfigError` naming the flag."""
    for f in fields(config):
        value, choices = getattr(config, f.name), f.metadata.get("choices")
        if choices and value is not None and value not in choices:
            raise ConfigError(f"{flag_name(f)} {value!r} is not one of {', '.join(map(str, choices))}")
        problem = field_problem(f, value)
        if problem:
            raise ConfigError(f"{flag_name(f)} {problem}")


class Validated:
    """Mix into a config dataclass: its fields are checked on construction, then :meth:`check` runs."""

    def __post_init__(self) -> None:
        validate(self)
        self.check()

    def check(self) -> None:
        """Rules across fields (raise :class:`ConfigError`); none by default."""
