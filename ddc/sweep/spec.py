"""Sweep specs: the grid of runs a YAML file (or a dict) describes, parsed, checked and expanded.

A spec::

    name: ddc-ablation                 # optional; default: the file's stem
    base:                              # TrainConfig fields shared by every run
      recipe: synthetic-linreg2d       # optional: start from a named recipe ...
      profile: smoke                   # ... at a profile (default: quick)
      epochs: 5
    methods:                           # optional axis: label -> fields of that variant
      baseline: {method: none}
      ddc:
        method: ddc
        method_options: {tau: 0.5}
        grid: {method_options.p_base: [0.2, 0.3]}   # axes local to this variant
    grid:                              # axes crossed with each other (and with the rest)
      method_options.normalize: [zscore, none]      # dotted keys reach into method_options
      lr: [0.01, 0.05]
    zip:                               # axes varied together (equal lengths); a mapping,
      - {train_subset: [200, 400], epochs: [4, 2]}  # or a list of such groups
    seeds: [0, 1, 2]

Every axis key is a :class:`ddc.train.TrainConfig` field, a dotted
``method_options.NAME``, or ``recipe`` / ``profile``. Values are resolved in
the order recipe < base < method variant < its local axes < grid < zip < seed;
``method_options`` mappings are merged key by key. ``methods`` may also be a
plain list of method names. Each run is identified by
:meth:`TrainConfig.run_id`, so a run shared by two sweeps is trained once.

The whole spec is expanded and validated (unknown keys, empty axes, bad
values: a ``ValueError`` naming the field) before anything runs.
"""

from __future__ import annotations

import copy
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..train import TrainConfig

SPEC_KEYS = ("name", "description", "base", "methods", "grid", "zip", "seeds")
PSEUDO_FIELDS = ("recipe", "profile")  # resolved into TrainConfig fields, never stored
MAPPING_FIELDS = ("method_options",)  # fields that dotted keys may reach into
VARIANT_AXES = ("grid", "zip")  # a methods entry may carry its own axes
SpecLike = Union[str, os.PathLike, Mapping[str, Any], "Spec"]


@dataclass(frozen=True)
class SweepRun:
    """One point of a sweep: its validated config and the labels it came from.

    Raises:
        Nothing (fields are not checked).
    """

    config: TrainConfig
    variant: Optional[str]  # label of the ``methods`` entry, or None
    point: Dict[str, Any]  # the axis values (dotted keys) that made this run

    @property
    def run_id(self) -> str:
        """The run's id (:meth:`ddc.train.TrainConfig.run_id`).

        Raises:
            Nothing of its own.
        """
        return self.config.run_id()


@dataclass
class Spec:
    """A parsed, checked sweep spec. :meth:`runs` gives its validated runs, :meth:`expand` their configs.

    Build one with :meth:`from_dict` or :func:`load_spec` (a spec made by hand
    is parsed again when loaded, so it gets the same checks).

    Raises:
        Nothing on construction; :meth:`from_dict` raises ``ValueError`` for a bad spec.
    """

    name: str
    base: Dict[str, Any] = field(default_factory=dict)
    grid: Dict[str, List[Any]] = field(default_factory=dict)
    zips: List[Dict[str, List[Any]]] = field(default_factory=list)
    seeds: Optional[List[int]] = None
    methods: Optional[Dict[str, Dict[str, Any]]] = None
    description: str = ""
    source: Optional[str] = None
    _runs: Optional[List[SweepRun]] = field(default=None, repr=False, compare=False)

    # ---- construction --------------------------------------------------------

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, name: Optional[str] = None, source: Optional[str] = None) -> "Spec":
        """Parse and check a spec mapping (the keys of :data:`SPEC_KEYS`), then expand every run to check it.

        ``name``: used when the mapping has none (a file's stem); ``source``: where it came from.

        Raises:
            ValueError: an unknown key, a malformed axis, an axis set in two places, a bad seed list,
                or a run whose config is invalid; the message names the key or the run.
        """
        if not isinstance(values, Mapping):
            raise ValueError(f"a sweep spec must be a mapping with keys {', '.join(SPEC_KEYS)}; got {type(values).__name__}")
        _check_spec_keys(values)
        spec_name = values.get("name") or name or "sweep"
        if not isinstance(spec_name, str):
            raise ValueError(f"name={spec_name!r} must be a string")
        base = values.get("base") or {}
        if not isinstance(base, Mapping):
            raise ValueError(f"base must be a mapping of TrainConfig fields; got {base!r}")
        for key in base:
            _check_key(key, "base")
        spec = cls(
            name=spec_name,
            base=dict(base),
            grid=_parse_grid(values.get("grid"), "grid"),
            zips=_parse_zips(values.get("zip"), "zip"),
            methods=_parse_methods(values.get("methods")),  # checked in this order: the first error is reported
            seeds=_parse_seeds(values.get("seeds")),
            description=str(values.get("description") or ""),
            source=source,
        )
        _check_axes_set_once(spec)
        spec.expand()  # validate every run now, before anything is submitted
        return spec

    def to_dict(self) -> Dict[str, Any]:
        """The spec as the mapping it was parsed from (keys of :data:`SPEC_KEYS`), ready for YAML.

        Raises:
            Nothing of its own.
        """
        values: Dict[str, Any] = {"name": self.name, "base": copy.deepcopy(self.base)}
        if self.description:
            values["description"] = self.description
        if self.methods is not None:
            values["methods"] = copy.deepcopy(self.methods)
        if self.grid:
            values["grid"] = copy.deepcopy(self.grid)
        if self.zips:
            values["zip"] = copy.deepcopy(self.zips)
        if self.seeds is not None:
            values["seeds"] = list(self.seeds)
        return values

    # ---- expansion -----------------------------------------------------------

    def runs(self) -> List[SweepRun]:
        """Every run of the sweep, validated, in submission order, unique by run id.

        Order: seeds outermost, so an interrupted sweep has whole seeds done.
        Points that resolve to the same run id (e.g. they differ only in
        operational fields such as ``tag``) are kept once, first one wins.

        Raises:
            ValueError: a run's config is invalid, when a spec made by hand (not through
                :meth:`from_dict`) is expanded for the first time; the message names the run.
        """
        if self._runs is None:
            self._runs = self._expand()
        return list(self._runs)

    def _expand(self) -> List[SweepRun]:
        seeds = self.seeds if self.seeds is not None else [None]
        variants: List[Tuple[Optional[str], Dict[str, Any]]] = (
            list(self.methods.items()) if self.methods is not None else [(None, {})]
        )
        expanded: List[SweepRun] = []
        seen = set()
        for seed in seeds:
            for label, entry in variants:
                fields = {key: value for key, value in entry.items() if key not in VARIANT_AXES}
                local_points = _points(entry.get("grid", {}), entry.get("zip", []))
                for local in local_points:
                    for point in _points(self.grid, self.zips):
                        assignments = [self.base, fields, local, point]
                        if seed is not None:
                            assignments.append({"seed": seed})
                        where = _describe(label, {**local, **point}, seed)
                        config = _resolve(assignments, where)
                        run_id = config.run_id()
                        if run_id in seen:
                            continue
                        seen.add(run_id)
                        full_point = {**fields, **local, **point}
                        if seed is not None:
                            full_point["seed"] = seed
                        expanded.append(SweepRun(config=config, variant=label, point=full_point))
        return expanded

    def expand(self) -> List[TrainConfig]:
        """The validated :class:`TrainConfig` of every run (``progress=False``).

        Raises:
            ValueError: a run's config is invalid, when a spec made by hand (not through
                :meth:`from_dict`) is expanded for the first time; the message names the run.
        """
        return [copy.deepcopy(run.config) for run in self.runs()]

    def run_ids(self) -> List[str]:
        """The run ids of :meth:`runs`, in submission order.

        Raises:
            ValueError: a run's config is invalid, when a spec made by hand (not through
                :meth:`from_dict`) is expanded for the first time; the message names the run.
        """
        return [run.run_id for run in self.runs()]

    def __len__(self) -> int:
        """The number of distinct runs."""
        return len(self.runs())


def load_spec(spec: SpecLike) -> Spec:
    """A :class:`Spec` from a YAML/JSON file path, a dict, or a Spec (returned as is once checked).

    Raises:
        FileNotFoundError: no file at the path.
        ValueError: the file is empty, not YAML or not a mapping (:class:`ddc.configfile.ConfigFileError`),
            or the spec is invalid (:meth:`Spec.from_dict`); the message names the file.
        TypeError: ``spec`` is none of a path, a mapping or a Spec.
    """
    if isinstance(spec, Spec):  # one built by hand is parsed again, so it gets the same checks
        return spec if spec._runs is not None else Spec.from_dict(spec.to_dict(), source=spec.source)
    if isinstance(spec, Mapping):
        return Spec.from_dict(spec)
    if isinstance(spec, (str, os.PathLike)):
        from ..configfile import load_mapping

        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"no sweep spec at {path}")
        values = load_mapping(path, "sweep spec")  # an empty file is an error, never a default run
        try:
            return Spec.from_dict(values, name=path.stem, source=str(path))
        except ValueError as error:
            raise ValueError(f"sweep spec {path}: {error}") from None
    raise TypeError(f"load_spec takes a path, a mapping or a Spec; got {type(spec).__name__}")


def _check_spec_keys(values: Mapping[str, Any]) -> None:
    unknown = sorted(set(values) - set(SPEC_KEYS))
    if unknown:
        import difflib

        hints = [f"{key!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(str(key), SPEC_KEYS, n=1))
                 else repr(key) for key in unknown]
        raise ValueError(f"unknown sweep spec key(s) {', '.join(hints)}; allowed keys: {', '.join(SPEC_KEYS)}")


def _parse_seeds(seeds) -> Optional[List[int]]:
    if seeds is None:
        return None
    if not isinstance(seeds, (list, tuple)):
        raise ValueError(f"seeds={seeds!r} must be a list of integers")
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed (or leave 'seeds' out to use base.seed)")
    bad = [seed for seed in seeds if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0]
    if bad:
        raise ValueError(f"seeds: {bad!r} are not non-negative integers")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={list(seeds)!r} has duplicates")
    return list(seeds)


def _check_axes_set_once(spec: "Spec") -> None:
    """An axis key set in two places would silently override the other; and ``seed`` is either an axis or ``seeds``."""
    places: Dict[str, str] = {}
    for where, keys in [("grid", spec.grid), *((f"zip[{index}]", group) for index, group in enumerate(spec.zips))]:
        for key in keys:
            if key in places:
                raise ValueError(f"axis {key!r} appears in both {places[key]} and {where}")
            places[key] = where
    for label, entry in (spec.methods or {}).items():
        local = [("grid", entry.get("grid", {}))] + [(f"zip[{index}]", group) for index, group in enumerate(entry.get("zip", []))]
        local_places: Dict[str, str] = {}
        for axis, keys in local:
            for key in keys:
                where = f"methods[{label!r}].{axis}"
                other = places.get(key) or local_places.get(key)
                if other:
                    raise ValueError(f"axis {key!r} appears in both {other} and {where}")
                local_places[key] = where
        if spec.seeds is not None and "seed" in local_places:
            raise ValueError(f"axis 'seed' in {local_places['seed']} conflicts with 'seeds'; use one of them")
    if spec.seeds is not None and "seed" in places:
        raise ValueError(f"axis 'seed' in {places['seed']} conflicts with 'seeds'; use one of them")


def _check_key(key, where: str) -> None:
    """Reject a key that is not a TrainConfig field, a dotted mapping key, or recipe/profile."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"{where}: key {key!r} must be a non-empty string")
    head, dotted, tail = key.partition(".")
    allowed = TrainConfig.field_names()
    if head not in allowed and head not in PSEUDO_FIELDS:
        import difflib

        close = difflib.get_close_matches(head, allowed + list(PSEUDO_FIELDS), n=1)
        raise ValueError(
            f"{where}: unknown config field {head!r}"
            + (f" (in {key!r})" if dotted else "")
            + (f" (did you mean {close[0]!r}?)" if close else "")
            + f"; allowed fields: {', '.join(allowed)}, recipe, profile"
        )
    if dotted:
        if head not in MAPPING_FIELDS:
            raise ValueError(f"{where}: {key!r}: dotted keys only reach into {', '.join(MAPPING_FIELDS)}, not {head!r}")
        if not tail or "." in tail:
            raise ValueError(f"{where}: {key!r} must look like '{head}.NAME'")


def _parse_grid(grid, where: str) -> Dict[str, List[Any]]:
    if grid is None:
        return {}
    if not isinstance(grid, Mapping):
        raise ValueError(f"{where} must be a mapping of axis name -> list of values; got {grid!r}")
    parsed = {}
    for key, values in grid.items():
        _check_key(key, f"{where} axis {key!r}")
        if not isinstance(values, (list, tuple)):
            raise ValueError(f"{where} axis {key!r} must be a list of values; got {values!r}")
        if len(values) == 0:
            raise ValueError(f"{where} axis {key!r} is empty: give at least one value")
        parsed[key] = list(values)
    return parsed


def _parse_zips(zips, where: str) -> List[Dict[str, List[Any]]]:
    if zips is None:
        return []
    groups = [zips] if isinstance(zips, Mapping) else zips
    if not isinstance(groups, (list, tuple)):
        raise ValueError(f"{where} must be a mapping of axis -> list (or a list of such mappings); got {zips!r}")
    parsed_groups = []
    for index, group in enumerate(groups):
        label = f"{where}[{index}]" if not isinstance(zips, Mapping) else where
        parsed = _parse_grid(group, label)
        if not parsed:
            raise ValueError(f"{label} is empty: give at least one axis")
        lengths = {key: len(values) for key, values in parsed.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{label}: zipped axes must have equal lengths; got {lengths}")
        parsed_groups.append(parsed)
    return parsed_groups


def _parse_methods(methods) -> Optional[Dict[str, Dict[str, Any]]]:
    if methods is None:
        return None
    if isinstance(methods, (list, tuple)):  # shorthand: a list of method names
        if not all(isinstance(method, str) for method in methods):
            raise ValueError(f"methods={methods!r}: a list of methods must hold method names; use a mapping label -> fields")
        methods = {method: {"method": method} for method in methods}
    if not isinstance(methods, Mapping):
        raise ValueError(f"methods must be a mapping of label -> config fields (or a list of method names); got {methods!r}")
    if not methods:
        raise ValueError("methods axis is empty: give at least one method")
    variants = {}
    for label, entry in methods.items():
        where = f"methods[{label!r}]"
        if not isinstance(label, str) or not label:
            raise ValueError(f"methods: label {label!r} must be a non-empty string")
        if entry is None:
            entry = {"method": label}
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} must be a mapping of config fields (e.g. {{method: ddc, method_options: {{...}}}}); got {entry!r}")
        entry = dict(entry)
        for key in entry:
            if key not in VARIANT_AXES:
                _check_key(key, where)
        parsed = {key: value for key, value in entry.items() if key not in VARIANT_AXES}
        if "grid" in entry:
            parsed["grid"] = _parse_grid(entry["grid"], f"{where}.grid")
        if "zip" in entry:
            parsed["zip"] = _parse_zips(entry["zip"], f"{where}.zip")
        variants[label] = parsed
    return variants


def _points(grid: Mapping[str, List[Any]], zips: Sequence[Mapping[str, List[Any]]]) -> List[Dict[str, Any]]:
    """Cartesian product of the grid axes and the zip groups (each group moves together)."""
    factors: List[List[Dict[str, Any]]] = [[{key: value} for value in values] for key, values in grid.items()]
    for group in zips:
        keys = list(group)
        factors.append([dict(zip(keys, values)) for values in zip(*(group[key] for key in keys))])
    points = []
    for combo in itertools.product(*factors):
        point: Dict[str, Any] = {}
        for part in combo:
            point.update(part)
        points.append(point)
    return points


def _assign(values: Dict[str, Any], key: str, value) -> None:
    """Set ``key`` (a field, or ``method_options.NAME``) in ``values``; a mapping of method options merges."""
    head, dotted, tail = key.partition(".")
    if dotted:
        current = values.get(head)
        current = dict(current) if isinstance(current, Mapping) else {}
        current[tail] = copy.deepcopy(value)
        values[head] = current
    elif head in MAPPING_FIELDS and isinstance(value, Mapping) and isinstance(values.get(head), Mapping):
        values[head] = {**values[head], **copy.deepcopy(dict(value))}
    else:
        values[head] = copy.deepcopy(value)


def _resolve(assignments: Sequence[Mapping[str, Any]], where: str) -> TrainConfig:
    from .. import recipes

    assigned: Dict[str, Any] = {}
    for part in assignments:
        for key, value in part.items():
            _assign(assigned, key, value)
    recipe_name = assigned.pop("recipe", None)
    profile = assigned.pop("profile", None)
    values: Dict[str, Any] = {}
    try:
        if recipe_name is not None:
            values.update(recipes.recipe(recipe_name, profile or recipes.DEFAULT_PROFILE))
        elif profile is not None:
            raise ValueError(f"profile={profile!r} needs a recipe")
        for key, value in assigned.items():
            _assign(values, key, value)
        values["progress"] = False  # workers never draw progress bars
        return TrainConfig.from_dict(values)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{where}: {error}") from None


def _describe(label, point, seed) -> str:
    parts = []
    if label is not None:
        parts.append(f"methods[{label!r}]")
    parts += [f"{key}={value!r}" for key, value in point.items()]
    if seed is not None:
        parts.append(f"seed={seed}")
    return "run " + (", ".join(parts) if parts else "(base)")

