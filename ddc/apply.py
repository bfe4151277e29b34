"""Put a method onto chosen layers of any model, and take it off again.

How a method rides on a layer (the mechanism, and why):

- The method is the layer's child module ``ddc_method``, and the layer's
  class is swapped for a subclass of it made once per class
  (:func:`regularized_class`, as ``torch.nn.utils.parametrize`` does) whose
  ``forward`` goes through the method. The class travels with the module, so
  the method acts on the layer's own parameters in every copy PyTorch makes:
  ``copy.deepcopy``, ``pickle`` and whole-module ``torch.save``/``torch.load``
  (the class pickles as "the regularised subclass of ``nn.Linear``", rebuilt
  on load), ``.to()``, ``torch.compile``, ``torch.func.functional_call``,
  DDP. A bound ``forward`` in the instance (our first design) did not survive
  ``torch.load``; ``parametrize`` refuses ``torch.save`` and renames the
  ``state_dict`` keys. Parameters are never replaced or copied: optimisers
  built before or after stay valid, and ``model.state_dict()`` keeps the
  plain architecture's keys.
- Weight methods also give the subclass ``weight``/``bias`` properties. While
  a forward pass of the model (or of any module above the layer, or of the
  layer itself) runs in training mode, reading ``layer.weight`` gives the
  masked weight, one mask per forward pass, however often it is read; outside
  a forward pass (a weight penalty, logging, ``.grad``, the optimizer) it is
  the parameter. So a parent that reads the child's weight itself
  (``nn.MultiheadAttention`` reads ``out_proj.weight``) gets the method too.
  A selected layer whose weight still receives a gradient the method never
  saw gets a ``RuntimeWarning`` naming it.

``handle.remove()`` (or :func:`detach`) restores the class, deletes the child
and the hooks, leaving the model exactly as it was.
"""

from __future__ import annotations

import collections.abc
import contextlib
import copyreg
import fnmatch
import functools
import inspect
import logging
import weakref
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

import torch
from torch import nn

from .functional import check_choice
from .methods import METHODS, WEIGHT_LAYERS, DynamicDropConnect, GlobalStats, LayerMethod, MaskRNG, WeightDrop

ATTR = "ddc_method"
OUTPUT_METHODS = ("dropout", "standout")
#: modules whose forward only calls their children: never the reader of a child's weight
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)

logger = logging.getLogger("ddc")

Selector = Union[str, type, Iterable[Union[str, type]], None]


# ----------------------------------------------------------------------------- the mechanism


class _Regularized(type):
    """Metaclass of the layer subclasses :func:`regularized_class` makes (so they pickle by recipe)."""


_CLASSES: Dict[Tuple[type, bool], type] = {}


def regularized_class(base: type, weights: bool = False) -> type:
    """The subclass of ``base`` that a layer carrying a method has (one per base class).

    Its ``forward`` calls the layer's ``ddc_method``; with ``weights`` its
    ``weight`` and ``bias`` are read through the method (see the module
    docstring). It keeps ``base``'s name, so the model prints as before, and
    pickles as ``regularized_class(base, weights)``.

    Args:
        base: the layer's own class (any ``nn.Module`` subclass).
        weights: whether ``weight``/``bias`` reads go through the method
            (weight methods: DropConnect, DDC).
    Returns:
        The subclass (the same object for the same ``(base, weights)``).
    Raises:
        Nothing; ``torch.jit.script`` of a layer of this class raises ``RuntimeError``.
    """
    key = (base, weights)
    cls = _CLASSES.get(key)
    if cls is None:
        namespace = {
            "forward": _forward,
            "__prepare_scriptable__": _refuse_script,
            "__module__": base.__module__,
            "_ddc_base": base,
            "__qualname__": base.__qualname__,
        }
        cls = _Regularized(base.__name__, (base,), namespace)
        if weights:
            for name in ("weight", "bias"):
                setattr(cls, name, property(functools.partial(_read, cls, name), doc=f"the {name}, masked inside a training forward"))
        _CLASSES[key] = cls
    return cls


def _reduce_class(cls):
    base = cls.__dict__.get("_ddc_base")
    if base is None:  # a further subclass (e.g. parametrize's): pickled by name, as usual
        return cls.__qualname__
    return regularized_class, (base, "weight" in cls.__dict__)


copyreg.pickle(_Regularized, _reduce_class)


def _forward(self, *args, **kwargs):
    method = self._modules.get(ATTR)
    if method is None:  # (the child was deleted by hand: the plain layer)
        return type(self)._ddc_base.forward(self, *args, **kwargs)
    return method(self, *args, **kwargs)


def _refuse_script(self):
    method = self._modules.get(ATTR)
    raise RuntimeError(
        f"ddc: torch.jit.script cannot compile a layer carrying method={getattr(method, 'name', None)!r} "
        f"({getattr(method, 'layer_name', '') or type(self).__name__!r}): its masks are drawn in Python. "
        "Use torch.compile, which keeps the method, or script the plain model (handle.remove() or ddc.detach)."
    )


def _read(cls: type, name: str, layer: nn.Module):
    params = layer.__dict__["_parameters"]
    raw = params[name] if name in params else getattr(super(cls, layer), name)
    method = layer.__dict__["_modules"].get(ATTR)
    return raw if method is None else method.read(layer, name, raw)


class _EnterScope:
    """Forward pre-hook of a module above regularised layers: their masked weights are what any
    code reads while this module's forward runs (``paths``: the layers, relative to it)."""

    def __init__(self, paths: Iterable[str]):
        self.paths = tuple(paths)
        self._found = None  # (weak reference to the module, its layers' methods): looked up once per module

    def methods(self, module: nn.Module) -> List[LayerMethod]:
        found = self._found
        if found is not None and found[0]() is module:
            return found[1]
        methods = []
        for path in self.paths:
            try:
                layer = module.get_submodule(path)
            except AttributeError:  # (the layer was replaced)
                continue
            method = layer._modules.get(ATTR)
            if method is not None:
                methods.append(method)
        self._found = (weakref.ref(module), methods)
        return methods

    def __getstate__(self) -> dict:  # a copy looks its own methods up
        return {"paths": self.paths, "_found": None}

    def __call__(self, module, args):
        for method in self.methods(module):
            method.enter()


class _ExitScope(_EnterScope):
    """The matching forward hook (``always_call``: it runs even when the forward raises)."""

    def __call__(self, module, args, output):
        for method in self.methods(module):
            method.exit()


def _scope_hooks(model: nn.Module, layers: Dict[str, nn.Module]) -> list:
    """Enter/exit hooks on the model and on every non-container module above a weight-method layer."""
    below: Dict[str, List[str]] = {}
    for name in layers:
        parts = name.split(".") if name else []
        for depth in range(len(parts)):
            below.setdefault(".".join(parts[:depth]), []).append(".".join(parts[depth:]))
    handles = []
    for prefix, paths in below.items():
        module = model.get_submodule(prefix)
        if prefix and isinstance(module, CONTAINERS):
            continue
        handles.append(module.register_forward_pre_hook(_EnterScope(paths)))
        handles.append(module.register_forward_hook(_ExitScope(paths), always_call=True))
    return handles


def attach(layer: nn.Module, method: LayerMethod, name: str = "") -> None:
    """Put one constructed ``method`` on ``layer`` (what :func:`apply` does per layer).

    For methods of your own (a :class:`LayerMethod` subclass). ``name`` is
    the layer's name in messages. :func:`detach` takes it off. The method is
    moved to the device of the layer's parameters and takes its training mode.

    Raises:
        ValueError: the layer already carries a method, or the method cannot
            act on it (its type, a zero-size weight); the message names the layer.
    """
    if ATTR in layer._modules:
        raise ValueError(
            f"layers: {name or type(layer).__name__!r} already carries method={layer._modules[ATTR].name!r}; "
            "remove it (handle.remove()) before applying another"
        )
    method.check_layer(layer, name)
    reference = next(iter(layer.parameters(recurse=False)), None)
    if reference is not None:
        method.to(reference.device)
    method.train(layer.training)
    method.layer_name = name
    layer.add_module(ATTR, method)
    layer.__class__ = regularized_class(type(layer), weights=isinstance(method, WeightDrop))
    method.attached(layer)


def detach(layer: nn.Module) -> None:
    """Take the method off ``layer`` (if any): the plain layer, exactly as before.

    Idempotent; a layer that carries no method is left as it is. Raises nothing.
    """
    method = layer._modules.pop(ATTR, None)
    if method is not None:
        method.detached()
    base = type(layer).__dict__.get("_ddc_base")
    if base is not None:
        layer.__class__ = base


@contextlib.contextmanager
def disabled(*modules: nn.Module):
    """Inside the block the methods on ``modules`` (and below them) do nothing: plain layers.

    Each method's previous ``active`` flag is restored on exit, also when the
    block raises. Raises nothing of its own.
    """
    methods = [child for module in modules for child in module.modules() if isinstance(child, LayerMethod)]
    previous = [method.active for method in methods]
    for method in methods:
        method.active = False
    try:
        yield
    finally:
        for method, state in zip(methods, previous):
            method.active = state


def method_options(method: str) -> Tuple[str, ...]:
    """Names of the options ``method`` accepts (for error messages and CLIs).

    Raises:
        ValueError: ``method`` is not one of :data:`ddc.methods.METHODS`.
    """
    return tuple(method_defaults(method))


def method_defaults(method: str) -> Dict[str, object]:
    """Every option of ``method`` with its default value (keyword-only ``__init__`` arguments
    of the method's class and its bases, ``rng`` excluded).

    Raises:
        ValueError: ``method`` is not one of :data:`ddc.methods.METHODS`.
    """
    check_choice("method", method, tuple(METHODS))
    defaults = {}
    for cls in METHODS[method].__mro__:
        if cls is nn.Module or not issubclass(cls, LayerMethod):
            continue
        for param in inspect.signature(cls.__init__).parameters.values():
            if param.kind is param.KEYWORD_ONLY and param.name != "rng":
                defaults.setdefault(param.name, param.default)
    return defaults


def make_method(method: str, rng: Optional[MaskRNG] = None, **options) -> LayerMethod:
    """Construct one method module, rejecting unknown options by name.

    Raises:
        ValueError: an unknown method or option name, or an option value the
            method refuses (the message names the option and what is allowed).
    """
    allowed = method_options(method)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for method={method!r}; "
            f"allowed options: {', '.join(allowed) or '(none)'}"
        )
    return METHODS[method](rng=rng, **options)


def regularized_layers(model: nn.Module) -> Dict[str, LayerMethod]:
    """Every layer of ``model`` that carries a method, by qualified name (model order). Raises nothing."""
    return {
        name: module._modules[ATTR]
        for name, module in model.named_modules()
        if ATTR in module._modules
    }


def _candidates(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    # The root counts too (name ""), so a bare layer can be regularised by type.
    for name, module in model.named_modules():
        if not isinstance(module, LayerMethod):
            yield name, module


def select_layers(model: nn.Module, layers: Selector, *, method: str = "ddc") -> Dict[str, nn.Module]:
    """Resolve a selector to ``{qualified name: module}`` in model order.

    ``layers`` is a name, a glob pattern (``"features.*"``), a module type
    (``nn.Conv2d``), or a list of these. ``None`` takes the model's declared
    default: ``model.ddc_layers`` for weight methods and
    ``model.dropout_layers`` for output methods. The root module counts too
    (name ``""``), so a bare layer can be selected by type.

    Raises:
        ValueError: no default declared for ``None``, an empty selection, a
            selector that is neither a string nor a module type, or one that
            matches nothing (the message lists the layers with weights).
    """
    if layers is None:
        attr = "dropout_layers" if method in OUTPUT_METHODS else "ddc_layers"
        layers = getattr(model, attr, None)
        if layers is None:
            raise ValueError(
                f"layers: {type(model).__name__} declares no default `{attr}`; pass layers= as "
                "names, glob patterns or module types (e.g. layers=['fc1'] or layers=nn.Linear)"
            )
    if isinstance(layers, (str, type)):
        selectors = [layers]
    elif isinstance(layers, collections.abc.Iterable) and not isinstance(layers, (bytes, bytearray, collections.abc.Mapping)):
        selectors = list(layers)
    else:  # (bytes would give their byte values, a mapping its keys without its values)
        raise ValueError(
            f"layers: {layers!r} is neither a name/pattern, an nn.Module type nor a list of them "
            "(e.g. layers=['fc1'] or layers=nn.Linear)"
        )
    if not selectors:
        raise ValueError("layers: the selection is empty; name at least one layer, pattern or type")
    candidates = list(_candidates(model))
    chosen: Dict[str, nn.Module] = {}
    for selector in selectors:
        if isinstance(selector, str):
            matched = [(name, module) for name, module in candidates if fnmatch.fnmatchcase(name, selector)]
        elif isinstance(selector, type) and issubclass(selector, nn.Module):
            matched = [(name, module) for name, module in candidates if isinstance(module, selector)]
        else:
            raise ValueError(f"layers: {selector!r} is neither a name/pattern nor an nn.Module type")
        if not matched:
            names = [name or "(root)" for name, module in candidates if isinstance(module, WEIGHT_LAYERS)]
            shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
            raise ValueError(f"layers: {selector!r} matches no layer of {type(model).__name__}; layers with weights: {shown}")
        chosen.update(matched)
    order = {name: position for position, (name, _) in enumerate(candidates)}
    return dict(sorted(chosen.items(), key=lambda item: order[item[0]]))


class Handle:
    """What ``apply`` returns: the attached methods and the way back.

    ``remove()`` restores the model exactly; the handle is also a context
    manager. ``state_dict()`` holds the methods' own state (gradient signals,
    RNG) for checkpoints, since the model's ``state_dict`` stays plain.
    ``layers`` lists the names of the regularised layers.
    ``load_state_dict`` raises ``ValueError`` for a state of another method
    or of other layers.

    Raises:
        KeyError: on construction, a layer in ``layers`` carries no method
            (``apply`` builds it from attached layers). See ``load_state_dict``.
    """

    def __init__(self, model: nn.Module, method: str, layers: Dict[str, nn.Module], rng: MaskRNG, hooks=()):
        self.model, self.method, self.rng = model, method, rng
        self._layers = layers
        self._hooks = list(hooks)
        self.methods: Dict[str, LayerMethod] = {name: layer._modules[ATTR] for name, layer in layers.items()}
        self.removed = False

    @property
    def layers(self) -> List[str]:
        """Names of the regularised layers, in attach order.

        Raises:
            Nothing.
        """
        return list(self.methods)

    def __repr__(self) -> str:
        state = "removed" if self.removed else "attached"
        return f"Handle(method={self.method!r}, layers={list(self.methods)}, {state})"

    def remove(self) -> None:
        """Detach every method and remove the handle's hooks; idempotent.

        Raises:
            Nothing of its own.
        """
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        for layer in self._layers.values():
            detach(layer)
        self.removed = True

    def __enter__(self) -> "Handle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def state_dict(self) -> dict:
        """The methods' own state: ``{"method", "rng", "layers": {name: state}}``.

        Raises:
            Nothing of its own.
        """
        return {
            "method": self.method,
            "rng": self.rng.state_dict(),
            "layers": {name: method.method_state() for name, method in self.methods.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output: the mask RNG and each layer's method state.

        Raises:
            ValueError: ``state`` is for another method, or for other layers
                (the message lists both), or holds keys a method does not know.
        """
        if state.get("method") != self.method:
            raise ValueError(f"state is for method={state.get('method')!r}, this handle is {self.method!r}")
        if set(state["layers"]) != set(self.methods):
            raise ValueError(f"state has layers {sorted(state['layers'])}, handle has {sorted(self.methods)}")
        self.rng.load_state_dict(state["rng"])
        for name, method_state in state["layers"].items():
            self.methods[name].load_method_state(method_state)


def apply(
    model: nn.Module,
    method: str,
    *,
    layers: Selector = None,
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    compile: bool = False,
    **options,
) -> Handle:
    """Put ``method`` on the selected layers of ``model``.

    Args:
        model: any ``nn.Module``.
        method: ``"none"``, ``"dropout"``, ``"dropconnect"``, ``"standout"`` or ``"ddc"``.
        layers: names, glob patterns or module types (see :func:`select_layers`).
            Weight methods take ``nn.Linear`` and ``nn.Conv1d/2d/3d``; output
            methods take any module whose output is a tensor (not containers,
            RNNs or attention, which return tuples). A selection by type or
            pattern is logged (logger ``"ddc"``, INFO) with what it picked.
        seed / generator: the random source of every mask of this ``apply``
            (one generator per device, shared by the layers, so the same seed
            gives the same masks). Neither: the global RNG.
        compile: DDC only: build each step's drop probabilities and masks
            with one ``torch.compile`` kernel (``ddc._fastpath``; the same
            masks up to float rounding, compiled once per process). How the
            masks are computed, not what they are: not one of the method's
            options, so it stays out of run configs.
        **options: the method's options (see each class's docstring), e.g.
            ``p_base=0.3, p_signal=0.5`` for DDC. Unknown names raise.
    Returns:
        A :class:`Handle`; ``handle.remove()`` restores the model.
    Raises:
        ValueError: an unknown method, option or layer, a layer the method
            cannot act on; the message names it and what is allowed.
    """
    check_choice("method", method, tuple(METHODS))
    check_choice("compile", compile, (False, True))
    if compile and method != "ddc":
        raise ValueError(f"compile=True builds DDC's masks; it applies to method='ddc' only, not method={method!r}")
    rng = MaskRNG(seed=seed, generator=generator)
    prototype = make_method(method, rng=rng, **options)  # validates every option up front
    if method == "none":
        if layers is not None:
            select_layers(model, layers, method=method)
        return Handle(model, method, {}, rng)
    selected = select_layers(model, layers, method=method)
    if layers is not None:
        chosen = [layers] if isinstance(layers, (str, type)) else list(layers)
        if any(isinstance(selector, type) or any(char in selector for char in "*?[") for selector in chosen):
            picked = ", ".join(name or "(root)" for name in selected)
            logger.info("ddc.apply(%r): layers=%r picked %d layer(s): %s", method, layers, len(selected), picked)
    for name, layer in selected.items():
        if ATTR in layer._modules:
            raise ValueError(
                f"layers: {name!r} already carries method={layer._modules[ATTR].name!r}; "
                "remove it (handle.remove()) before applying another"
            )
        prototype.check_layer(layer, name)
    for index, (name, layer) in enumerate(selected.items()):
        attach(layer, prototype if index == 0 else make_method(method, rng=rng, **options), name)
    hooks = _scope_hooks(model, selected) if isinstance(prototype, WeightDrop) else []
    handle = Handle(model, method, selected, rng, hooks)
    pooled = [each for each in handle.methods.values() if isinstance(each, DynamicDropConnect) and each.scope == "global"]
    if pooled:
        shared = GlobalStats(pooled)
        for each in pooled:
            each.global_stats = shared
    if compile:
        for each in handle.methods.values():
            each.compile_masks = True
    return handle
