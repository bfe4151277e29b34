"""Put a method onto chosen layers of any model, and take it off again.

``apply`` attaches one method module per selected layer as the child
``ddc_method`` and routes the layer's ``forward`` through it. Parameters are
never replaced or copied, so optimisers built before or after stay valid, and
``model.state_dict()`` keeps the plain architecture's keys. ``remove()``
deletes the child and the routing, leaving the model exactly as it was.
"""

from __future__ import annotations

import fnmatch
import inspect
import types
from typing import Dict, Iterable, Iterator, Optional, Tuple, Union

import torch
from torch import nn

from .functional import check_choice
from .methods import METHODS, DynamicDropConnect, GlobalStats, LayerMethod, MaskRNG

ATTR = "ddc_method"
OUTPUT_METHODS = ("dropout", "standout")

Selector = Union[str, type, Iterable[Union[str, type]], None]


def _routed_forward(self, *args, **kwargs):
    return getattr(self, ATTR)(self, *args, **kwargs)


def method_options(method: str) -> Tuple[str, ...]:
    """Names of the options ``method`` accepts (for error messages and CLIs)."""
    return tuple(method_defaults(method))


def method_defaults(method: str) -> Dict[str, object]:
    """Every option of ``method`` with its default value."""
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
    """Construct one method module, rejecting unknown options by name."""
    allowed = method_options(method)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for method={method!r}; "
            f"allowed options: {', '.join(allowed) or '(none)'}"
        )
    return METHODS[method](rng=rng, **options)


def regularized_layers(model: nn.Module) -> Dict[str, LayerMethod]:
    """Every layer of ``model`` that carries a method, by qualified name."""
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
    ``model.dropout_layers`` for output methods.
    """
    if layers is None:
        attr = "dropout_layers" if method in OUTPUT_METHODS else "ddc_layers"
        layers = getattr(model, attr, None)
        if layers is None:
            raise ValueError(
                f"layers: {type(model).__name__} declares no default `{attr}`; pass layers= as "
                "names, glob patterns or module types (e.g. layers=['fc1'] or layers=nn.Linear)"
            )
    selectors = [layers] if isinstance(layers, (str, type)) else list(layers)
    if not selectors:
        raise ValueError("layers: the selection is empty; name at least one layer, pattern or type")
    candidates = list(_candidates(model))
    chosen: Dict[str, nn.Module] = {}
    for selector in selectors:
        if isinstance(selector, str):
            matched = [(n, m) for n, m in candidates if fnmatch.fnmatchcase(n, selector)]
        elif isinstance(selector, type) and issubclass(selector, nn.Module):
            matched = [(n, m) for n, m in candidates if isinstance(m, selector)]
        else:
            raise ValueError(f"layers: {selector!r} is neither a name/pattern nor an nn.Module type")
        if not matched:
            names = [n or "(root)" for n, m in candidates if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
            shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
            raise ValueError(f"layers: {selector!r} matches no layer of {type(model).__name__}; layers with weights: {shown}")
        chosen.update(matched)
    order = {name: i for i, (name, _) in enumerate(candidates)}
    return dict(sorted(chosen.items(), key=lambda item: order[item[0]]))


class Handle:
    """What ``apply`` returns: the attached methods and the way back.

    ``remove()`` restores the model exactly; the handle is also a context
    manager. ``state_dict()`` holds the methods' own state (gradient signals,
    RNG) for checkpoints, since the model's ``state_dict`` stays plain.
    """

    def __init__(self, model: nn.Module, method: str, layers: Dict[str, nn.Module], rng: MaskRNG):
        self.model, self.method, self.rng = model, method, rng
        self._layers = layers
        self.methods: Dict[str, LayerMethod] = {name: layer._modules[ATTR] for name, layer in layers.items()}
        self.removed = False

    def __repr__(self) -> str:
        state = "removed" if self.removed else "attached"
        return f"Handle(method={self.method!r}, layers={list(self.methods)}, {state})"

    def remove(self) -> None:
        """Detach every method; idempotent."""
        for layer in self._layers.values():
            if ATTR in layer._modules:
                del layer._modules[ATTR]
            if "forward" in layer.__dict__:
                del layer.__dict__["forward"]
        self.removed = True

    def __enter__(self) -> "Handle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def state_dict(self) -> dict:
        return {
            "method": self.method,
            "rng": self.rng.state_dict(),
            "layers": {name: method.method_state() for name, method in self.methods.items()},
        }

    def load_state_dict(self, state: dict) -> None:
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
    **options,
) -> Handle:
    """Put ``method`` on the selected layers of ``model``.

    Args:
        model: any ``nn.Module``.
        method: ``"none"``, ``"dropout"``, ``"dropconnect"``, ``"standout"`` or ``"ddc"``.
        layers: names, glob patterns or module types (see :func:`select_layers`).
            Weight methods take ``nn.Linear`` and ``nn.Conv1d/2d/3d``; output
            methods take any module.
        seed / generator: the random source of every mask of this ``apply``
            (one generator per device, shared by the layers, so the same seed
            gives the same masks). Neither: the global RNG.
        **options: the method's options (see each class's docstring), e.g.
            ``p_base=0.3, p_signal=0.5`` for DDC. Unknown names raise.
    Returns:
        A :class:`Handle`; ``handle.remove()`` restores the model.
    """
    check_choice("method", method, tuple(METHODS))
    rng = MaskRNG(seed=seed, generator=generator)
    prototype = make_method(method, rng=rng, **options)  # validates every option up front
    if method == "none":
        if layers is not None:
            select_layers(model, layers, method=method)
        return Handle(model, method, {}, rng)
    selected = select_layers(model, layers, method=method)
    for name, layer in selected.items():
        if ATTR in layer._modules:
            raise ValueError(
                f"layers: {name!r} already carries method={layer._modules[ATTR].name!r}; "
                "remove it (handle.remove()) before applying another"
            )
        prototype.check_layer(layer, name)
    for index, (name, layer) in enumerate(selected.items()):
        instance = prototype if index == 0 else make_method(method, rng=rng, **options)
        instance.layer_name = name
        _attach(layer, instance)
    handle = Handle(model, method, selected, rng)
    ddc_methods = [m for m in handle.methods.values() if isinstance(m, DynamicDropConnect) and m.scope == "global"]
    if ddc_methods:
        shared = GlobalStats(ddc_methods)
        for m in ddc_methods:
            m.global_stats = shared
    return handle


def _attach(layer: nn.Module, method: LayerMethod) -> None:
    reference = next(iter(layer.parameters(recurse=False)), None)
    if reference is not None:
        method.to(reference.device)
    method.train(layer.training)
    layer.add_module(ATTR, method)
    layer.forward = types.MethodType(_routed_forward, layer)
