"""Config values as users write them: YAML files and ``KEY=VALUE`` pairs, numbers read as numbers.

PyYAML speaks YAML 1.1, whose float needs a dot and a signed exponent, so it
reads ``3e-1``, ``1e4`` and ``1.5e3`` as strings (``.5`` and ``1.5e-3`` it
reads as floats). YAML 1.2, JSON and Python read all of them as numbers, and
so does every user writing ``lr: 1e-4``. :func:`loads` is PyYAML's safe
loader with YAML 1.2's float pattern added; everything else stays YAML 1.1.
Every value ``ddc`` parses goes through it: ``--config`` files, ``--opt``,
notebook ``-p`` overrides and sweep specs.

Errors are :class:`ConfigFileError` (a ``ValueError``) naming the file or
the key and saying what is wrong, on one line.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, Union

__all__ = ["ConfigFileError", "loads", "parse_value", "parse_pairs", "load_mapping"]

#: YAML 1.2 core schema floats (no dot or unsigned exponent needed); ints match PyYAML's int pattern first
_FLOAT_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?$")


class ConfigFileError(ValueError):
    """A config file, sweep spec or ``KEY=VALUE`` pair that cannot be read; the message names it.

    Raises:
        Nothing; it is what reading a config file, spec or pair raises.
    """


@functools.lru_cache(maxsize=1)
def _loader():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    # copy the resolver table so PyYAML's own SafeLoader is left as it is
    Loader.yaml_implicit_resolvers = {key: list(value) for key, value in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))
    return Loader


def loads(text: str) -> Any:
    """Parse YAML text with numbers such as ``3e-1`` read as floats.

    Raises:
        yaml.YAMLError: ``text`` is not YAML.
    """
    import yaml

    return yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader subclass


def parse_value(text: str, *, name: str = "value") -> Any:
    """One ``KEY=VALUE`` value as YAML: numbers, booleans, null, lists, else the string itself.

    Raises:
        ConfigFileError: ``text`` is not valid YAML; the message names ``name``.
    """
    import yaml

    try:
        return loads(text)
    except yaml.YAMLError as error:
        raise ConfigFileError(f"{name}={text!r} is not a valid value: {_one_line(error)}") from None


def parse_pairs(pairs: Iterable[str], option: str) -> Dict[str, Any]:
    """``["KEY=VALUE", ...]`` to a dict of parsed values (:func:`parse_value`).

    Raises:
        ConfigFileError: a pair without ``=``, with an empty key or a bad value; the message names ``option``.
    """
    parsed: Dict[str, Any] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        key = key.strip()
        if not equals or not key:
            raise ConfigFileError(f"{option} {pair!r} must look like KEY=VALUE")
        parsed[key] = parse_value(value, name=f"{option} {key}")
    return parsed


def load_mapping(path: Union[str, os.PathLike], what: str = "config file") -> Dict[str, Any]:
    """The mapping in a YAML/JSON file; ``what`` names the file's role in messages.

    Raises:
        ConfigFileError: the file is unreadable, not text, empty, not YAML, or not a mapping; the message names ``path``.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ConfigFileError(f"{what} {path} is not a text file (YAML or JSON)") from None
    except OSError as error:
        raise ConfigFileError(f"{what} {path} cannot be read: {error.strerror or error}") from None
    if not text.strip():
        raise ConfigFileError(f"{what} {path} is empty: it must hold a mapping of names to values")
    if path.suffix.lower() == ".json":  # JSON is read as JSON: YAML would accept JSON's mistakes (a trailing comma)
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigFileError(f"{what} {path} is not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})") from None
    else:
        try:
            values = loads(text)
        except yaml.YAMLError as error:
            raise ConfigFileError(f"{what} {path} is not valid YAML: {_one_line(error)}") from None
    if not isinstance(values, dict):
        kind = "nothing" if values is None else type(values).__name__
        raise ConfigFileError(f"{what} {path} must hold a mapping of names to values; it holds {kind}")
    return values


def _one_line(error: Exception) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return " ".join(str(problem).split()) + where
