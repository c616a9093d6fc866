"""Options generated from dataclass fields: RunConfig's (``with_config_flags``) and the analysis
specs' (``with_spec_flags``). An option's name, type, help and default come from its field, so
the two cannot drift apart, and a new field is a new option without an edit here or in a
command."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Optional

import typer

from lbtkit.cli.common import parse_float, parse_int
from lbtkit.config import RunConfig, field_type
from lbtkit.specs import Spec

# Typer's own messages ("Input should be a valid integer") do not repeat the value given.
_NUMBER_PARSERS = {int: parse_int, float: parse_float}
_KEYWORD = inspect.Parameter.KEYWORD_ONLY


def with_config_flags(fn=None, *, exclude: tuple[str, ...] = ()):
    """Add one ``--kebab-case`` option per RunConfig field to a command's signature
    (``--batch-size``): generated from the dataclass, so the two cannot drift apart.

    Each defaults to None ("not given"), so only flags the user typed override the preset
    and the config file. The command receives them as ``config_flags: dict``.
    """
    if fn is None:
        return functools.partial(with_config_flags, exclude=exclude)
    params = [p for p in _resolved_parameters(fn) if p.name != "config_flags"]
    names = []
    for f in dataclasses.fields(RunConfig):
        if f.name in exclude:
            continue
        flag = "--output" if f.name == "output_dir" else "--" + f.name.replace("_", "-")
        kind = field_type(f.name)
        option = typer.Option(*_declarations(flag, kind), help=_config_help(f),
                              show_default=False, parser=_NUMBER_PARSERS.get(kind))
        params.append(inspect.Parameter(
            f.name, _KEYWORD, default=None,
            annotation=Annotated[Optional[kind], option],  # noqa: UP045
        ))
        names.append(f.name)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        flags = {name: kwargs.pop(name) for name in names}
        return fn(*args, config_flags=flags, **kwargs)

    wrapper.__signature__ = inspect.signature(fn).replace(parameters=params)
    return wrapper


def _config_help(f: dataclasses.Field) -> str:
    """A field's help with its RunConfig default (what applies without a preset)."""
    text = f.metadata.get("help", "")
    if f.default is None or f.default == "":
        return text
    shown = (f"--{f.name.replace('_', '-')}" if f.default is True else
             f"--no-{f.name.replace('_', '-')}" if f.default is False else f"{f.default:g}"
             if isinstance(f.default, float) else str(f.default))
    return f"{text}  [default: {shown}]"


def with_spec_flags(spec: Spec, *, fields: Sequence[str] | None = None,
                    exclude: Sequence[str] = (), help: Mapping[str, str] | None = None
                    ) -> Callable:
    """Put one option per field of ``spec`` where the command's parameter ``spec_flags``
    stands in its signature, so ``--help`` lists them there.

    An option is named after its field (``--top-k``), or its ``flag`` metadata
    (``--subspace`` for ``subspaces``); its help is the field's ``help`` metadata, or
    ``help[path]`` where the command says it differently; its default is the value ``spec``
    holds, a tuple as the comma list the spec also reads (or the field's ``text``
    metadata, ``-1:2:25``). A bool is ``--x/--no-x``, or ``--x`` alone with ``switch``
    metadata.

    ``fields``: the paths to offer, in order (``"sb"``, ``"sharpness.eps"``); by default every
    field of ``spec`` but ``exclude``. A name of one of the command's own parameters among
    them puts that parameter there. The command receives the values as
    ``spec_flags: dict``, by field and nested by path (``{"sharpness": {"eps": "1e-3"}}``),
    ready for the spec's ``from_dict``.
    """
    paths = list(fields) if fields is not None else [
        f.name for f in dataclasses.fields(spec) if f.name not in exclude]

    def decorate(fn: Callable) -> Callable:
        own = {p.name: p for p in _resolved_parameters(fn)}
        generated: dict[str, str] = {}  # parameter name -> field path
        placed = []
        for path in paths:
            if path in own:
                placed.append(own[path])
                continue
            param = _spec_parameter(spec, path, (help or {}).get(path))
            if param.name in own or param.name in generated:
                raise TypeError(f"{fn.__name__}: option {param.name!r} of {path!r} is taken")
            generated[param.name] = path
            placed.append(param)
        params = []
        for p in own.values():
            if p.name == "spec_flags":
                params.extend(placed)
            elif p.name not in paths:
                params.append(p)
        # Keyword-only, all: the generated options sit among the command's own parameters,
        # and Typer passes every value by name.
        params = [p.replace(kind=_KEYWORD) for p in params]

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            values: dict[str, Any] = {}
            for name, path in generated.items():
                *parents, last = path.split(".")
                node = values
                for parent in parents:
                    node = node.setdefault(parent, {})
                node[last] = kwargs.pop(name)
            return fn(*args, spec_flags=values, **kwargs)

        wrapper.__signature__ = inspect.signature(fn).replace(parameters=params)
        return wrapper

    return decorate


def _spec_parameter(spec: Spec, path: str, help_text: str | None) -> inspect.Parameter:
    """The option of the field at ``path`` (``"sharpness.eps"``) of ``spec``."""
    *parents, name = path.split(".")
    owner = functools.reduce(getattr, parents, spec)
    f = next((f for f in dataclasses.fields(owner) if f.name == name), None)
    if f is None:
        raise TypeError(f"{type(owner).__name__} has no field {name!r}")
    help_text = help_text or f.metadata.get("help")
    if not help_text:
        raise TypeError(f"{type(owner).__name__}.{name}: no help for its option (give the "
                        f"field help metadata, or leave it out of the command's options)")
    flag = "--" + f.metadata.get("flag", name.replace("_", "-"))
    kind, optional = _value_type(typing.get_type_hints(type(owner))[name], path)
    value = getattr(owner, name)
    if kind is tuple:
        kind = str
        # str(), not a shorter format: the text is the value the command gets unless given
        value = f.metadata["text"] if "text" in f.metadata and value == f.default else \
            ",".join(map(str, value))
    declarations = [flag] if f.metadata.get("switch") else _declarations(flag, kind)
    option = typer.Option(*declarations, help=help_text, parser=_NUMBER_PARSERS.get(kind))
    annotation = Optional[kind] if optional else kind  # noqa: UP045
    return inspect.Parameter(flag[2:].replace("-", "_"), _KEYWORD, default=value,
                             annotation=Annotated[annotation, option])


def _value_type(hint: Any, path: str) -> tuple[type, bool]:
    """(bool, int, float, str or tuple; whether None is allowed) of a field's type hint."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)  # int | None
    kinds = [k for k in typing.get_args(hint) if k is not type(None)] if union else [hint]
    kind = (typing.get_origin(kinds[0]) or kinds[0]) if len(kinds) == 1 else None
    if kind not in (bool, int, float, str, tuple):
        raise TypeError(f"{path}: no option for a field of type {hint}")
    return kind, union


def _declarations(flag: str, kind: type) -> list[str]:
    return [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]


def _resolved_parameters(fn: Callable) -> list[inspect.Parameter]:
    """``fn``'s parameters with their string annotations (postponed evaluation) resolved,
    so Typer sees real types."""
    hints = typing.get_type_hints(fn, include_extras=True)
    return [p.replace(annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(fn).parameters.values()]
