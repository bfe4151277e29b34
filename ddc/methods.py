"""Regularisers as small modules that ride on one layer.

Each method is an ``nn.Module`` attached to its layer as the child
``ddc_method``; the layer's class is swapped for a subclass whose ``forward``
goes through it, and weight methods also answer the reads of ``layer.weight``
inside a forward pass (see :mod:`ddc.apply`). Methods hold configuration and state, and call into
:mod:`ddc.functional` for the maths. All their buffers are non-persistent, so a
model's ``state_dict`` is exactly that of the plain architecture.

Weight methods (:class:`DropConnect`, :class:`DynamicDropConnect`) mask the
layer's weight; output methods (:class:`Dropout`, :class:`Standout`) mask its
output. In eval mode every method except Standout computes exactly the plain
layer (Standout's inference rule scales the output by its keep probability).
"""

from __future__ import annotations

import collections
import copy
import functools
import math
import warnings
import weakref
from typing import Callable, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from ._fastpath import WeightBuffer, drop_and_keep, masked_weight_applies, streamed_stats
from ._transforms import backward_active, ddp_process_group, functorch_active, plain, vmap_active
from .functional import (
    EPS,
    NORMALIZE,
    PREFER,
    RECALIBRATION,
    _as_work,
    apply_keep,
    check_choice,
    check_drop_config,
    check_probability,
    drop_probability,
    keep_mask,
    keep_scale,
    work_dtype,
)
from .record import StepRecord

WEIGHT_LAYERS: Tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class _Rule(NamedTuple):
    """What the backward of a masked weight does with its gradient.

    ``dense``: ``update="reference"`` (the weight gets ``dL/dW_eff``), else
    ``update="autograd"`` (it gets ``keep * scale * dL/dW_eff``). ``sink``:
    the method's signal store (:meth:`WeightDrop.gradient_sink`), or None;
    :meth:`give` calls it once per backward as ``sink(dL/dW_eff, None)``, or
    ``sink(None, dL/dW)`` with ``param_signal``: a tensor autograd never gets.
    ``buffer``: the memory a large CPU layer's masked weight, and then the
    gradient autograd gets, are formed in (:class:`ddc._fastpath.WeightBuffer`;
    by backward the masked weight is dead), or None for fresh tensors.
    """

    dense: bool
    sink: Optional[Callable[[Optional[Tensor], Optional[Tensor]], None]]
    param_signal: bool
    buffer: Optional[WeightBuffer] = None

    def give(self, signal: Tensor) -> None:
        if self.param_signal:
            self.sink(None, signal)
        else:
            self.sink(signal, None)

    def masked(self, tensor: Tensor, keep_mask: Tensor, scale: Tensor) -> Tensor:
        """``apply_keep(tensor, keep_mask, scale)``, in the buffer's memory where that is free."""
        reuse = self.buffer is not None and masked_weight_applies(tensor, keep_mask, scale)
        return apply_keep(tensor, keep_mask, scale, out=self.buffer.take(tensor) if reuse else None)

    def copy(self, tensor: Tensor) -> Tensor:
        """``tensor.clone()``, in the buffer's memory where that is free."""
        if self.buffer is None:  # (a buffer exists only for a CPU weight outside torch.func: WeightBuffer.wanted)
            return tensor.clone()
        return self.buffer.take(tensor).copy_(tensor)

    def weight_gradient(self, grad_effective: Tensor, grad_param: Optional[Tensor]) -> Optional[Tensor]:
        """The weight's gradient (``dL/dW_eff`` when dense, else ``dL/dW``), after the signal went to the sink;
        a copy where the two would be the same tensor, so the sink's signal is never the one autograd hands out."""
        grad_weight = grad_effective if self.dense else grad_param
        if self.sink is not None:
            signal = grad_param if self.param_signal else grad_effective
            self.give(signal)
            if grad_weight is signal:
                grad_weight = self.copy(grad_weight)
        return grad_weight


class _MaskedWeight(torch.autograd.Function):
    """``W_eff = W * keep_mask * scale``, whose backward also feeds the method's signal sink.

    Shapes: ``weight`` ``(out, in, ...)``; ``keep_mask`` bool, the weight's
    shape, or ``(batch, *weight.shape)`` for per-example masks (the
    gradients are then summed over the batch); ``scale`` broadcastable to
    ``keep_mask``; ``keep_mask=None`` is the identity (DDC's first step: a
    gradient is captured before any mask exists). Backward (docs/method.md §3):
    ``dL/dW = keep_mask * scale * dL/dW_eff`` (``rule.dense=False``, the
    paper's equations read literally) or ``dL/dW_eff`` (``rule.dense=True``,
    the authors' dense update). The sink gets DDC's signal; where it would be
    the very tensor autograd gets as the weight's gradient (which becomes
    ``.grad``, changed in place by users and optimizers), autograd gets a
    copy. Works under torch.func (``grad``, ``vmap``: the vmap rule is
    generated).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(weight, keep_mask, scale, rule):
        return weight.clone() if keep_mask is None else rule.masked(weight, keep_mask, scale)

    @staticmethod
    def setup_context(ctx, inputs, output):
        weight, keep_mask, scale, rule = inputs
        ctx.rule = rule
        ctx.per_example = keep_mask is not None and keep_mask.dim() > weight.dim()
        ctx.save_for_backward(keep_mask, scale)

    @staticmethod
    def backward(ctx, grad_effective):
        keep_mask, scale = ctx.saved_tensors
        rule = ctx.rule
        grad_param = None
        if keep_mask is None:
            grad_param = grad_effective
        elif rule.param_signal:  # the sink keeps it: fresh memory
            grad_param = apply_keep(grad_effective, keep_mask, scale)
        elif not rule.dense:  # autograd gets it
            grad_param = rule.masked(grad_effective, keep_mask, scale)
        if ctx.per_example:
            grad_effective = grad_effective.sum(0)
            grad_param = None if grad_param is None else grad_param.sum(0)
        return rule.weight_gradient(grad_effective, grad_param), None, None, None


#: Edges per chunk of per-example masks (:class:`_ExampleMasks`): about 4 MB of float32 per temporary.
EXAMPLE_CHUNK_EDGES = 1 << 20


def _default_generator(device: torch.device) -> torch.Generator:
    """The global generator of ``device`` (what ``generator=None`` draws from)."""
    if device.type == "cpu":
        return torch.default_generator
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    raise ValueError(f"mask='sample' on {device}: give the method a seed= or generator= on that device")


class _ExampleMasks:
    """The per-example keep masks of one forward pass, made chunk by chunk of examples.

    A chunk holds about :data:`EXAMPLE_CHUNK_EDGES` edges (at least one
    example), and a multiple of 4 edges, so on the CPU the masks are bit for
    bit those of one ``keep_mask(drop_prob, shape=(batch, out, in))`` call (four
    edges per 64-bit word, see ``ddc._fastpath.MASK_BITS``). Backward makes them
    again from the generator state saved before the first chunk, unless they
    were kept for a recorder (``record=True``: ``keep`` then holds all
    ``batch x out x in`` of them, as bools, and ``scale`` the scales).
    """

    def __init__(self, drop_prob: Tensor, generator, shape, recalibration: str, eps: float, record: bool, dtype=None):
        self.drop_prob, self.shape, self.recalibration, self.eps = drop_prob, tuple(shape), recalibration, eps
        self.dtype = dtype  # of the scales: the weight's
        self.generator = generator if generator is not None else _default_generator(drop_prob.device)
        self.state = self.generator.get_state()
        edges = max(self.shape[1] * self.shape[2], 1)
        step = 4 // math.gcd(edges, 4)
        # (a single chunk is the last one, so it needs no multiple of 4; buffers are sized by this)
        self.examples = min(max(step, EXAMPLE_CHUNK_EDGES // edges // step * step), max(self.shape[0], 1))
        self.keep = torch.empty(self.shape, dtype=torch.bool, device=drop_prob.device) if record else None
        self.scale: Optional[Tensor] = None

    def chunks(self, again: bool = False):
        """``(start, stop, keep, scale)`` per chunk; ``again=True`` (backward) gives the same masks."""
        generator = self.generator
        if again and self.keep is None:
            generator = torch.Generator(device=self.generator.device)
            generator.set_state(self.state)
        scales = []
        batch, rows, cols = self.shape
        for start in range(0, batch, self.examples):
            stop = min(start + self.examples, batch)
            if again and self.keep is not None:
                keep = self.keep[start:stop]
            else:
                keep = keep_mask(self.drop_prob, generator=generator, shape=(stop - start, rows, cols))
                if self.keep is not None:
                    self.keep[start:stop] = keep
            scale = keep_scale(keep, mode=self.recalibration, drop_prob=self.drop_prob, eps=self.eps, batch_dims=1, dtype=self.dtype)
            scales.append(scale)
            yield start, stop, keep, scale
        if self.keep is not None and not again:
            self.scale = torch.cat(scales) if self.recalibration == "realized" else scales[0]


class _PerExampleLinear(torch.autograd.Function):
    """``y_b = x_b (W * keep_b * scale_b)^T`` for every example ``b``, one chunk of examples at a time.

    ``x`` is ``(batch, tokens, in)``. Forward and backward hold one chunk's
    masked weights (``examples x out x in``, see :class:`_ExampleMasks`), never
    the ``batch x out x in`` ones. The backward rules are those of
    :class:`_MaskedWeight` for per-example masks: ``dL/dW_eff`` summed over
    the batch (one matrix product, it needs no mask) goes to the sink;
    ``dL/dW = sum_b keep_b * scale_b * dL/dW_eff_b``, or ``dL/dW_eff`` with
    ``dense=True``. As there, autograd never gets a tensor the sink got.
    The products run in autocast's dtype when autocast is on (as ``F.linear``
    would), else in the promoted dtype of ``x`` and ``W``; gradients come back
    in the dtypes of ``x`` and ``W``.
    """

    @staticmethod
    def forward(ctx, x, weight, masks, rule):
        ctx.masks, ctx.rule = masks, rule
        ctx.dtypes = (x.dtype, weight.dtype)
        ctx.compute = _matmul_dtype(x, weight)
        ctx.save_for_backward(x, weight)
        x, weight = x.to(ctx.compute), weight.to(ctx.compute)
        out = x.new_empty(x.shape[0], x.shape[1], weight.shape[0])
        effective = weight.new_empty(masks.examples, *weight.shape)  # one buffer for every chunk
        for start, stop, keep, scale in masks.chunks():
            part = effective[: stop - start]
            torch.mul(weight, keep, out=part).mul_(scale)  # (W * keep) * scale, as apply_keep
            torch.bmm(x[start:stop], part.transpose(1, 2), out=out[start:stop])
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = (saved.to(ctx.compute) for saved in ctx.saved_tensors)
        grad_out = grad_out.to(ctx.compute).contiguous()
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        rule = ctx.rule
        grad_eff = grad_out.reshape(-1, grad_out.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
        need_param = not rule.dense or rule.param_signal
        grad_param = torch.zeros_like(weight) if need_param else None
        if grad_x is not None or need_param:
            shape = (ctx.masks.examples, *weight.shape)
            factors, products = weight.new_empty(shape), weight.new_empty(shape)  # reused by every chunk
            for start, stop, keep, scale in ctx.masks.chunks(again=True):
                factor, product = factors[: stop - start], products[: stop - start]
                factor.copy_(keep).mul_(scale)  # keep * scale
                if grad_x is not None:
                    torch.mul(weight, factor, out=product)
                    torch.bmm(grad_out[start:stop], product, out=grad_x[start:stop])
                if need_param:
                    torch.bmm(grad_out[start:stop].transpose(1, 2), x[start:stop], out=product).mul_(factor)
                    grad_param += product.sum(0)
        x_dtype, w_dtype = ctx.dtypes
        grad_x = None if grad_x is None else grad_x.to(x_dtype)
        grad_eff = grad_eff.to(w_dtype)
        grad_param = None if grad_param is None else grad_param.to(w_dtype)
        return grad_x, rule.weight_gradient(grad_eff, grad_param), None, None


def _matmul_dtype(x: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype ``F.linear(x, weight)`` computes in: autocast's when it is on for the device."""
    device = x.device.type
    try:
        enabled = torch.is_autocast_enabled(device)
    except TypeError:  # (torch < 2.4 takes no device)
        enabled = torch.is_autocast_cpu_enabled() if device == "cpu" else torch.is_autocast_enabled()
    if enabled:
        try:
            return torch.get_autocast_dtype(device)
        except AttributeError:  # (torch < 2.4)
            return torch.get_autocast_cpu_dtype() if device == "cpu" else torch.get_autocast_gpu_dtype()
    return torch.promote_types(x.dtype, weight.dtype)


def _plain_forward(layer: nn.Module, *args, **kwargs):
    """The layer's own forward (of its class before ``apply`` swapped it, see :mod:`ddc.apply`)."""
    return getattr(type(layer), "_ddc_base", type(layer)).forward(layer, *args, **kwargs)


class MaskRNG:
    """The random source of one ``apply``: one generator per device, shared by all its layers.

    Either wraps a given ``torch.Generator`` or creates one per device from
    ``seed`` on first use. ``None`` for both uses the global RNG. Copies
    (``deepcopy``, pickle, whole-model ``torch.save``) carry their generators
    at the same state.

    Raises:
        ValueError: both ``seed`` and ``generator`` given, or a ``seed`` that
            is not an int; :meth:`get` for a device other than the given
            generator's.
    """

    def __init__(self, seed: Optional[int] = None, generator: Optional[torch.Generator] = None):
        if seed is not None and generator is not None:
            raise ValueError("seed and generator: give one or the other, not both")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"seed={seed!r} must be an int")
        self.seed, self.generator = seed, generator
        self._generators: dict = {}

    def get(self, device) -> Optional[torch.Generator]:
        """The generator of ``device`` (None: the global RNG).

        Raises:
            ValueError: a ``generator`` was given on another device type than ``device``.
        """
        device = torch.device(device)
        if self.generator is not None:
            if self.generator.device.type != device.type:
                raise ValueError(
                    f"generator is on {self.generator.device} but the layer is on {device}; "
                    "pass a generator on the layer's device, or seed= instead"
                )
            return self.generator
        if self.seed is None:
            return None
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def state_dict(self) -> dict:
        """Each generator's state, keyed by device (``"given"``: a generator passed in).

        Raises:
            Nothing.
        """
        state = {key: generator.get_state() for key, generator in self._generators.items()}
        if self.generator is not None:
            state["given"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output (``"given"`` only when a generator was passed in).

        Raises:
            RuntimeError, TypeError: a key is not a device torch can make a generator on,
                or a value is not a generator state (torch).
        """
        for key, value in state.items():
            if key == "given":
                if self.generator is not None:
                    self.generator.set_state(value)
                continue
            generator = torch.Generator(device=key)
            generator.set_state(value)
            self._generators[key] = generator

    # Copies (deepcopy, pickle, torch.save of a whole model) carry generators at the same state.
    def __getstate__(self) -> dict:
        given = None if self.generator is None else (str(self.generator.device), self.generator.get_state())
        return {"seed": self.seed, "given": given, "states": {key: generator.get_state() for key, generator in self._generators.items()}}

    def __setstate__(self, state: dict) -> None:
        self.seed, self.generator, self._generators = state["seed"], None, {}
        if state["given"] is not None:
            device, value = state["given"]
            self.generator = _generator_at(device, value)
        for key, value in state["states"].items():
            generator = _generator_at(key, value)
            if generator is not None:  # (a device this machine lacks: made from the seed when used)
                self._generators[key] = generator


def _generator_at(device: str, state: Tensor) -> Optional[torch.Generator]:
    """A generator on ``device`` at ``state``, or None where this machine has no such device."""
    try:
        generator = torch.Generator(device=device)
    except RuntimeError:
        return None
    generator.set_state(state)
    return generator


class LayerMethod(nn.Module):
    """Base class: configuration plus a random source, attached to one layer.

    The layer's ``forward`` calls ``method(layer, *args, **kwargs)`` (see
    :mod:`ddc.apply`), which returns what the layer returns (same shape and
    dtype). Subclass it (or :class:`WeightDrop`) for a method of your own
    and put it on a layer with :func:`ddc.apply.attach`: set ``name``,
    ``layer_types`` and implement :meth:`forward`.

    Raises:
        ValueError: from :meth:`check_layer` (a layer it cannot act on) and
            :meth:`load_method_state` (keys it does not know).
    """

    name = "base"
    #: layer types the method can sit on; ``None`` means any module
    layer_types: Optional[Tuple[type, ...]] = None

    def __init__(self, *, rng: Optional[MaskRNG] = None):
        super().__init__()
        self.mask_rng = rng if rng is not None else MaskRNG()
        #: when True the method keeps what the last forward pass used in ``self.last``
        #: (a :class:`ddc.record.StepRecord`) for a recorder; off by default so nothing is retained.
        self.keep_last = False
        self.last: Optional[StepRecord] = None
        #: the layer's qualified name in the model it was applied to (for messages)
        self.layer_name = ""
        #: False inside ``ddc.disabled(...)``: the layer computes its plain function
        self.active = True
        self._depth = 0  # forward passes open around the layer (see ddc.apply)
        self._effective: dict = {}  # masked parameters of the forward pass that is open
        self._drawn: dict = {}  # role -> generator states of the last draws (see rng)

    # (enter and exit run several times per forward pass: they write __dict__ directly,
    # skipping nn.Module.__setattr__'s checks)
    def enter(self) -> None:
        """A forward pass around the layer begins (its own, its model's or a parent's).

        Raises:
            Nothing.
        """
        state = self.__dict__
        if not state["_depth"]:
            state["_effective"] = {}  # its own (nn.DataParallel's replicas share their __dict__'s values)
        state["_depth"] += 1

    def exit(self) -> None:
        """It ends: the next forward pass draws new masks.

        Raises:
            Nothing.
        """
        state = self.__dict__
        state["_depth"] = max(state["_depth"] - 1, 0)
        if not state["_depth"]:
            state["_effective"] = {}

    def read(self, layer: nn.Module, name: str, raw: Optional[Tensor]) -> Optional[Tensor]:
        """What reading ``layer.<name>`` gives (weight methods: the masked parameter in a forward).

        Raises:
            Nothing (here: ``raw`` as it is).
        """
        return raw

    def attached(self, layer: nn.Module) -> None:
        """Called once the method sits on ``layer``.

        Raises:
            Nothing (does nothing here).
        """

    def detached(self) -> None:
        """Called when it is taken off: let go of everything kept for the layer.

        Raises:
            Nothing.
        """
        self.last = None
        self._effective = {}

    # Copies start with nothing open and nothing cached: no forward pass, no recorder, no buffers.
    _TRANSIENT = {"_depth": 0, "_effective": {}, "last": None, "keep_last": False, "_drawn": {}}

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.update({key: copy.copy(value) for key, value in self._TRANSIENT.items()})
        return state

    def _named(self) -> str:
        return f" in layer {self.layer_name!r}" if self.layer_name else ""

    def check_layer(self, layer: nn.Module, name: str) -> None:
        """Refuse a layer this method cannot act on.

        Raises:
            ValueError: the layer is not of ``layer_types``, or its weight has
                no edges; the message names the layer and what is allowed.
        """
        if self.layer_types is not None and not isinstance(layer, self.layer_types):
            kinds = ", ".join(kind.__name__ for kind in self.layer_types)
            raise ValueError(
                f"layers: {name!r} is a {type(layer).__name__}, which has no weight that "
                f"method={self.name!r} can mask; allowed layer types: {kinds}"
            )
        weight = layer._parameters.get("weight")
        if weight is not None and weight.numel() == 0:
            raise ValueError(
                f"layers: {name!r} has a zero-size weight {tuple(weight.shape)}; there is nothing "
                f"for method={self.name!r} to drop (select layers with at least one edge)"
            )

    #: Forward passes per role whose generator state is kept for a recomputation.
    RECOMPUTE_DEPTH = 8

    def rng(self, device, role: str = "output") -> Optional[torch.Generator]:
        """The generator one mask of ``role`` on ``device`` is drawn from (None: the global RNG).

        A forward pass recomputed during backward (``torch.utils.checkpoint``,
        reentrant or not) must draw the masks of the forward it stands for.
        torch's checkpoint restores the global RNG, not a method's own
        generator (``seed=``/``generator=``), so each draw of an ordinary
        forward keeps the generator's state (the last :attr:`RECOMPUTE_DEPTH`
        per role), and a draw during backward gets a copy of the generator at
        the state of the latest draw not yet replayed (recomputations run in
        the reverse order of their forwards); the generator itself moves on
        as without checkpointing. A recomputed draw with none left to replay
        (a layer shared by several checkpointed segments of one forward)
        warns once (``RuntimeWarning``) and draws anew.

        Raises:
            ValueError: the ``generator`` given is on another device type (:meth:`MaskRNG.get`).
        """
        generator = self.mask_rng.get(device)
        if generator is None:
            return None
        by_role = self.__dict__.setdefault("_drawn", {})  # (absent in methods pickled by older versions)
        drawn = by_role.get(role)
        if drawn is None:
            drawn = by_role[role] = collections.deque(maxlen=self.RECOMPUTE_DEPTH)
        if not backward_active():
            drawn.append(generator.get_state())
            return generator
        if not drawn:
            self._warn_unmatched_recompute()
            return generator
        replay = torch.Generator(device=generator.device)
        replay.set_state(drawn.pop())
        return replay

    def _warn_unmatched_recompute(self) -> None:
        if self.__dict__.get("_warned_recompute"):
            return
        self.__dict__["_warned_recompute"] = True
        warnings.warn(
            f"ddc: layer {self.layer_name or '(root)'!r} drew a mask during backward (a checkpointed forward "
            "recomputed) with no draw of a forward pass left to replay, so this recomputation's mask, and the "
            "gradients through it, are not those of the forward. Known causes: a layer whose one forward mask "
            "serves several checkpointed segments or calls, nested reentrant checkpoints, more than "
            f"{self.RECOMPUTE_DEPTH} checkpointed forwards before one backward, a second backward through one "
            "checkpointed graph. Checkpoint each layer's uses within one plain module call, once per backward.",
            RuntimeWarning,
            stacklevel=3,
        )

    def method_state(self) -> dict:
        """State to checkpoint beside the model (the model's state_dict stays plain).

        Raises:
            Nothing.
        """
        return {}

    def load_method_state(self, state: dict) -> None:
        """Restore :meth:`method_state`'s output (a copy of it).

        Raises:
            ValueError: ``state`` holds keys this method does not know.
        """
        if state:
            raise ValueError(f"{self.name}: unexpected method state keys {sorted(state)}")

    def forward(self, layer: nn.Module, *args, **kwargs):  # pragma: no cover - abstract
        """``layer``'s output with the method acting (what the layer's own forward is replaced by).

        Raises:
            NotImplementedError: on this base class; each method defines it.
        """
        raise NotImplementedError


# --------------------------------------------------------------------------- output methods

#: modules that return a tuple (or another non-tensor) from forward, and containers, which
#: call their children: output methods refuse them at apply time
NON_TENSOR_OUTPUT: Tuple[type, ...] = (nn.RNNBase, nn.LSTMCell, nn.MultiheadAttention, nn.AdaptiveLogSoftmaxWithLoss)
CONTAINERS: Tuple[type, ...] = (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.ParameterList, nn.ParameterDict)


class OutputMethod(LayerMethod):
    """Base of the methods that mask a layer's output (a tensor of any shape).

    Raises:
        ValueError: at apply time, for containers and layers whose output is
            not a tensor (:data:`NON_TENSOR_OUTPUT`, ``return_indices``).
        TypeError: in forward, if the layer returns something else than a tensor.
    """

    def check_layer(self, layer, name):
        """:meth:`LayerMethod.check_layer`, and refuse containers and layers whose output is not a tensor.

        Raises:
            ValueError: as the class says, naming the layer.
        """
        super().check_layer(layer, name)
        kind = type(layer).__name__
        if isinstance(layer, CONTAINERS):
            raise ValueError(
                f"layers: {name!r} is a container ({kind}); method={self.name!r} masks one layer's output: "
                "select the layers inside it"
            )
        if isinstance(layer, NON_TENSOR_OUTPUT) or getattr(layer, "return_indices", False):
            raise ValueError(
                f"layers: {name!r} is a {kind}, whose output is not a tensor (a tuple); method={self.name!r} "
                "masks tensor outputs: select a layer that returns a tensor"
            )

    def output_keep_mask(self, drop_prob: Tensor, out: Tensor) -> Tensor:
        """Keep mask of ``out``'s shape for ``drop_prob`` (a scalar or ``out``'s shape), from this method's generator.

        Under ``torch.func.vmap`` the uniforms are drawn out of place (``torch.rand``), so vmap's
        ``randomness`` decides: ``"different"`` one mask per vmapped entry, ``"same"`` one for all.

        Raises:
            ValueError: this method's generator is on another device type than ``out`` (:meth:`rng`).
            RuntimeError: ``drop_prob`` does not broadcast to ``out``'s shape (torch).
        """
        if vmap_active():
            uniform = torch.rand(tuple(out.shape), generator=self.rng(out.device), device=out.device, dtype=drop_prob.dtype)
            return uniform > drop_prob
        return keep_mask(drop_prob, generator=self.rng(out.device), shape=tuple(out.shape))

    def plain_output(self, layer, *args, **kwargs) -> Tensor:
        """The layer's own output for these inputs (its forward, without any method).

        Raises:
            TypeError: the layer returned something other than a tensor.
        """
        out = _plain_forward(layer, *args, **kwargs)
        if not isinstance(out, Tensor):
            raise TypeError(
                f"ddc: layer {self.layer_name or type(layer).__name__!r} returned a {type(out).__name__}, not a "
                f"tensor; method={self.name!r} masks tensor outputs (take it off this layer)"
            )
        return out


class Dropout(OutputMethod):
    """Dropout (Srivastava et al. 2014) on the layer's output, inverted scaling.

    Placed on the paper's DDC layer it reproduces ``nn.Dropout`` after that
    layer, before the ReLU. The mask comes from this method's generator.

    Shapes: the output, any shape; one keep mask of that shape per forward
    pass (per example and unit), scaled by ``1 / (1 - p)``.
    Source: Srivastava et al. (2014), JMLR 15; docs/method.md §5 (the paper's
    Dropout baseline, arXiv 2502.19948).

    Raises:
        ValueError: ``p`` outside [0, 1].
    """

    name = "dropout"

    def __init__(self, *, p: float = 0.5, rng=None):
        super().__init__(rng=rng)
        check_probability("p", p)
        self.p = float(p)

    def extra_repr(self) -> str:
        """``p=...`` in the module's repr.

        Raises:
            Nothing.
        """
        return f"p={self.p}"

    def forward(self, layer, *args, **kwargs):
        """``layer``'s output, any shape, masked and scaled by ``1 / (1 - p)`` in training.

        Raises:
            TypeError: the layer returns something other than a tensor (:meth:`plain_output`).
        """
        out = self.plain_output(layer, *args, **kwargs)
        if not layer.training or self.p == 0.0 or not self.active:
            return out
        drop_prob = torch.full((), self.p, dtype=work_dtype(out.dtype), device=out.device)
        keep = self.output_keep_mask(drop_prob, out)
        scale = keep_scale(keep, mode="expected", drop_prob=drop_prob, dtype=out.dtype)
        if self.keep_last:
            self.last = StepRecord(keep_mask=keep, scale=scale, drop_prob=drop_prob)
        return apply_keep(out, keep, scale)


class Standout(OutputMethod):
    """Standout / adaptive dropout (Ba & Frey 2013), our own implementation.

    Keep probability per example and unit: ``pi = sigmoid(alpha * a + beta)``
    with ``a = W x + b`` the layer's output (``form="affine"``, the common
    form where beta acts as a bias), or ``pi = sigmoid(alpha * a + beta * sum(x))``
    (``form="tied"``, the paper's standout weights ``alpha * W + beta``
    elementwise; Linear layers only). Training output ``m * a`` with
    ``m ~ Bernoulli(pi)``; inference output ``pi * a``. Because ``m`` and ``pi``
    are non-negative this equals masking ``f(a)`` for a positively homogeneous
    activation ``f`` such as ReLU, which follows the layer in every bundled
    model. ``pi`` carries no gradient (the mask is a sample).

    Defaults ``alpha=1.0, beta=0.0`` (Ba & Frey tune both; with these,
    units with negative pre-activation, which ReLU zeroes anyway, keep with
    probability below one half).

    Shapes: output ``(batch, ..., units)``; ``pi`` and the mask have the
    output's shape (``form="tied"``: ``x`` is ``(batch, ..., in)``).
    Source: Ba & Frey (2013), "Adaptive dropout for training deep neural
    networks", NeurIPS; docs/method.md §5.

    Raises:
        ValueError: ``form`` not ``"affine"``/``"tied"``, ``alpha``/``beta``
            not finite numbers; ``form="tied"`` on a layer that is not ``nn.Linear``.
    """

    name = "standout"
    FORMS = ("affine", "tied")

    def __init__(self, *, alpha: float = 1.0, beta: float = 0.0, form: str = "affine", rng=None):
        super().__init__(rng=rng)
        check_choice("form", form, self.FORMS)
        for key, value in (("alpha", alpha), ("beta", beta)):
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{key}={value!r} must be a finite number")
        self.alpha, self.beta, self.form = float(alpha), float(beta), form

    def check_layer(self, layer, name):
        """:meth:`LayerMethod.check_layer`, and ``form="tied"`` only on ``nn.Linear``.

        Raises:
            ValueError: ``form="tied"`` on another layer type (the message names it).
        """
        super().check_layer(layer, name)
        if self.form == "tied" and not isinstance(layer, nn.Linear):
            raise ValueError(
                f"layers: {name!r} is a {type(layer).__name__}; standout form='tied' needs nn.Linear "
                "(use form='affine' for other layers)"
            )

    def extra_repr(self) -> str:
        """``alpha=..., beta=..., form=...`` in the module's repr.

        Raises:
            Nothing.
        """
        return f"alpha={self.alpha}, beta={self.beta}, form={self.form!r}"

    def keep_probability(self, x: Tensor, out: Tensor) -> Tensor:
        """``pi``, the keep probability of each unit of ``out`` (its shape; no gradient).

        Raises:
            Nothing of its own; a ``"tied"`` ``x`` whose summed shape does not
            broadcast against ``out`` raises torch's ``RuntimeError``.
        """
        with torch.no_grad():
            offset = self.beta * x.sum(-1, keepdim=True) if self.form == "tied" else self.beta
            return torch.sigmoid(self.alpha * out + offset)

    def forward(self, layer, x, *args, **kwargs):
        """``layer(x)``, ``(batch, ..., units)``, times the mask (training) or ``pi`` (eval).

        Raises:
            TypeError: the layer returns something other than a tensor (:meth:`plain_output`).
        """
        out = self.plain_output(layer, x, *args, **kwargs)
        if not self.active:
            return out
        keep_prob = self.keep_probability(x, out)
        if not layer.training:
            return out * keep_prob
        drop_prob = 1.0 - keep_prob
        keep = self.output_keep_mask(drop_prob, out)
        if self.keep_last:
            self.last = StepRecord(keep_mask=keep, scale=torch.ones((), dtype=out.dtype, device=out.device), drop_prob=drop_prob)
        return out * keep


# --------------------------------------------------------------------------- weight methods


class _GradWatch:
    """Post-accumulate-grad hook on a weight: warns once if the weight got a gradient while the
    method made no masked weight since the last one (something bypassed the layer's forward)."""

    def __init__(self, method: "WeightDrop"):
        self.method = method

    def __call__(self, param: Tensor) -> None:
        method = self.method
        if method.training and method.active and not method._uses and not method._warned_bypass:
            method._warned_bypass = True
            warnings.warn(
                f"ddc: the weight of layer {method.layer_name or '(root)'!r} received a gradient that did not "
                f"pass through method={method.name!r}: something read it outside the layer's forward and outside "
                "the forward of the model it was applied to (e.g. a parent module called by itself, or code "
                "around the model), so the method had no effect there. Apply the method to the model that "
                "holds that code, or call the layer itself.",
                RuntimeWarning,
                stacklevel=2,
            )
        method._uses = 0


class WeightDrop(LayerMethod):
    """Shared machinery of DropConnect and DDC: mask, re-calibrate, update rule.

    Inside a training forward pass around the layer (see :mod:`ddc.apply`),
    reading ``layer.weight`` (and ``layer.bias`` with ``drop_bias``) gives
    the masked parameter, made on the first read and kept until that pass
    ends: **one mask per forward pass**. A layer used several times in one
    forward of the model (tied, unrolled) uses the same mask each time, and
    its signal is the whole ``dL/dW_eff`` (autograd sums the uses). Called
    by itself, outside its model's forward, each call draws its own mask.
    Several forward passes before one backward give several masks; the
    signal is then the sum of their ``dL/dW_eff``.

    Shapes: the keep mask has the weight's shape (``out x in`` for Linear,
    ``out x in x k...`` for Conv), or ``batch x out x in`` with
    ``mask="sample"`` (nn.Linear only); the bias mask ``(out,)`` or
    ``(batch, out)``. ``W_eff = W * keep_mask * scale`` with ``scale`` from
    :func:`ddc.functional.keep_scale` (``recalibration``).
    Source: docs/method.md §2 (mask, re-calibration, bias) and §3 (the two
    update rules); Wan et al. (2013) for per-example masks.

    Raises:
        ValueError: an option outside its allowed values (``mask``,
            ``recalibration``, ``update``, ``drop_bias``, ``eps``), or at
            apply time a layer that is not Linear/Conv (``mask="sample"``:
            not Linear).
    """

    layer_types = WEIGHT_LAYERS
    MASKS = ("batch", "sample")
    UPDATES = ("autograd", "reference")

    def __init__(
        self,
        *,
        mask: str = "batch",
        recalibration: str = "realized",
        update: str = "autograd",
        drop_bias: bool = False,
        eps: float = EPS,
        rng=None,
    ):
        super().__init__(rng=rng)
        check_choice("mask", mask, self.MASKS)
        check_choice("recalibration", recalibration, RECALIBRATION)
        check_choice("update", update, self.UPDATES)
        check_choice("drop_bias", drop_bias, (False, True))
        if not isinstance(eps, (int, float)) or not 0.0 < eps < 1e-2:
            raise ValueError(f"eps={eps!r} must be a small positive number (0 < eps < 1e-2)")
        self.mask, self.recalibration, self.update = mask, recalibration, update
        self.drop_bias, self.eps = bool(drop_bias), float(eps)
        self._uses = 0  # masked weights made since the weight last got a gradient (see _GradWatch)
        self._weight_buffers: dict = {}  # role -> WeightBuffer (large CPU layers only)
        self._warned_bypass = False
        self._group = None  # DDP's process group while a DDP forward runs: the signal is all-reduced

    _TRANSIENT = dict(LayerMethod._TRANSIENT, _uses=0, _watching=None, _weight_buffers={})

    def check_layer(self, layer, name):
        """:meth:`LayerMethod.check_layer`, and ``mask="sample"`` only on ``nn.Linear``.

        Raises:
            ValueError: ``mask="sample"`` on another layer type (the message names it).
        """
        super().check_layer(layer, name)
        if self.mask == "sample" and not isinstance(layer, nn.Linear):
            raise ValueError(
                f"layers: {name!r} is a {type(layer).__name__}; mask='sample' (one mask per "
                "example) is implemented for nn.Linear only; use mask='batch'"
            )

    # Subclasses say how likely each edge is to be dropped; None means "do not
    # mask this step" (DDC's passthrough first step).
    def weight_drop_prob(self, weight: Tensor) -> Optional[Tensor]:  # pragma: no cover - abstract
        """This step's drop probability of each edge of ``weight`` (broadcasts against it), or None.

        Raises:
            NotImplementedError: on this base class; each weight method defines it.
        """
        raise NotImplementedError

    def bias_drop_prob(self, bias: Tensor) -> Optional[Tensor]:  # pragma: no cover - abstract
        """This step's drop probability of each entry of ``bias``, or None (see :meth:`weight_drop_prob`).

        Raises:
            NotImplementedError: on this base class; each weight method defines it.
        """
        raise NotImplementedError

    def gradient_sink(self, role: str) -> Optional[Callable[[Optional[Tensor], Optional[Tensor]], None]]:
        """A callback receiving ``(dL/dW_eff, None)`` in backward, or ``(None, dL/dW)`` with
        ``signal_source="param"`` (never a tensor autograd gets), or None.

        Raises:
            Nothing (None here).
        """
        return None

    def signal_tensor(self, role: str, param: Tensor) -> Optional[Tensor]:
        """The tensor this step's drop probabilities came from (None: not signal-driven).

        Raises:
            Nothing (None here).
        """
        return None

    def recorded_signal(self, role: str, param: Tensor) -> Optional[Tensor]:
        """What a recorder keeps as this step's signal (a tensor that will not change under it).

        Raises:
            Nothing of its own.
        """
        return self.signal_tensor(role, param)

    def draw_mask(self, role: str, param: Tensor, shape: Tuple[int, ...]) -> Optional[Tuple[Optional[Tensor], Tensor]]:
        """``(drop_prob, keep)`` for this step, or None for "do not mask".

        ``drop_prob`` may be None when nothing downstream needs it (no
        recorder, realised re-calibration): the fast path then never
        materialises it.

        Raises:
            NotImplementedError: a subclass that does not define the drop probability of ``role``.
            ValueError: this method's generator is on another device type (:meth:`rng`).
        """
        drop_prob = self.weight_drop_prob(param) if role == "weight" else self.bias_drop_prob(param)
        if drop_prob is None:
            return None
        if vmap_active():
            # Out-of-place uniforms: under vmap(randomness="different") each entry gets its own mask.
            uniform = torch.rand(shape, generator=self.rng(param.device, role), device=param.device, dtype=drop_prob.dtype)
            return drop_prob, uniform > drop_prob
        return drop_prob, keep_mask(drop_prob, generator=self.rng(param.device, role), shape=shape)

    def _step_record(self, drawn: Optional[tuple], signal: Optional[Tensor]) -> StepRecord:
        """The record of this forward pass (``drawn``: ``(drop_prob, keep, scale)`` or None)."""
        options = self.__dict__.pop("_drop_prob_options", None)
        if drawn is None:
            return StepRecord(signal=signal)
        drop_prob, keep, scale = drawn
        return StepRecord(keep_mask=keep, scale=scale, signal=signal, drop_prob=drop_prob, drop_prob_options=options)

    def _needs_drop_prob(self) -> bool:
        return self.keep_last or self.recalibration in ("expected", "per_edge")

    def _rule(self, role: str, param: Optional[Tensor] = None) -> _Rule:
        """The backward rule of ``role``; with ``param``, a large CPU one also gets its :class:`WeightBuffer`."""
        sink = self.gradient_sink(role)
        param_signal = sink is not None and getattr(self, "signal_source", "effective") == "param"
        buffer = self._weight_buffers.setdefault(role, WeightBuffer()) if param is not None and WeightBuffer.wanted(param) else None
        return _Rule(dense=self.update == "reference", sink=sink, param_signal=param_signal, buffer=buffer)

    def _node_made(self, role: str) -> None:
        """A masked ``role`` parameter with a gradient sink entered a graph (DDC counts them)."""

    def _masked(self, param: Tensor, role: str, batch: Optional[int]):
        shape = (batch, *param.shape) if batch is not None else tuple(param.shape)
        drawn = self.draw_mask(role, param, shape)
        rule = self._rule(role, param)
        if rule.sink is not None and torch.is_grad_enabled() and param.requires_grad:
            self._node_made(role)
        if drawn is None:
            if rule.sink is None:
                return param, None
            return _MaskedWeight.apply(param, None, None, rule), None
        drop_prob, keep = drawn
        scale = keep_scale(
            keep, mode=self.recalibration, drop_prob=drop_prob, eps=self.eps,
            batch_dims=0 if batch is None else 1, dtype=param.dtype,
        )
        masked = _MaskedWeight.apply(param, keep, scale, rule)
        return masked, (drop_prob, keep, scale)

    def forward(self, layer, *args, **kwargs):
        """``layer``'s output with its masked weight (and bias): the layer's own output shape.

        Raises:
            Nothing of its own; the layer's and the mask hooks' errors pass through.
        """
        if self.mask == "sample" and layer.training and self.active and not functorch_active():
            return self._per_example_forward(layer, *args, **kwargs)
        self.enter()  # the layer's own forward reads layer.weight: masked (see read)
        try:
            return _plain_forward(layer, *args, **kwargs)
        finally:
            self.exit()

    def read(self, layer, name, raw):
        """``raw``, or inside a training forward this pass's masked ``weight``/``bias`` (``raw``'s shape).

        Raises:
            Nothing of its own; :meth:`draw_mask`'s errors pass through.
        """
        if name == "weight":
            self._watch(raw)
        if (
            not self._depth
            or not layer.training
            or not self.active
            or raw is None
            or (name == "bias" and not self.drop_bias)
        ):
            return raw
        effective = self._effective.get(name)
        if effective is None:
            effective = self._effective[name] = self._effective_param(raw, name)
        return effective

    def _effective_param(self, param: Tensor, role: str) -> Tensor:
        """This forward pass's masked ``param`` (``role``: weight or bias)."""
        self._uses += role == "weight"
        self._group = ddp_process_group()
        masked, drawn = self._masked(param, role, None)
        if role == "weight" and self.keep_last:
            self.last = self._step_record(drawn, self.recorded_signal("weight", param))
        return masked

    def attached(self, layer):
        """Start watching ``layer``'s weight for gradients.

        Raises:
            Nothing.
        """
        self._watch(layer._parameters.get("weight"))

    def detached(self):
        """Let go of the layer: the kept record, masked weights, their buffers and the weight's watch.

        Raises:
            Nothing.
        """
        super().detached()
        self._weight_buffers = {}
        watch = self.__dict__.get("_watching")
        if watch is not None:
            watch[1].remove()
        self.__dict__["_watching"] = None

    def _watch(self, param) -> None:
        """Keep a :class:`_GradWatch` on the weight (again on a copy's own weight)."""
        if not isinstance(param, nn.Parameter) or not param.requires_grad:
            return
        watch = self.__dict__.get("_watching")
        if watch is not None and watch[0]() is param:
            return
        if watch is not None:
            watch[1].remove()
        handle = param.register_post_accumulate_grad_hook(_GradWatch(self))
        self.__dict__["_watching"] = (weakref.ref(param), handle)

    def _per_example_forward(self, layer: nn.Linear, x: Tensor) -> Tensor:
        """One weight mask per example (``mask="sample"``, nn.Linear), in chunks of examples
        (:class:`_PerExampleLinear`); bias masks, ``batch x out``, are drawn whole after them."""
        weight = layer._parameters["weight"]
        self._watch(weight)
        self._uses += 1
        self._group = ddp_process_group()
        batch = x.shape[0]
        flat = x.reshape(batch, -1, x.shape[-1])
        drop_prob = self.weight_drop_prob(weight)
        rule = self._rule("weight")
        if rule.sink is not None and torch.is_grad_enabled() and weight.requires_grad:
            self._node_made("weight")
        masks = None
        if drop_prob is None:  # no mask this step (DDC's first step); the sink still gets its gradient
            effective = weight if rule.sink is None else _MaskedWeight.apply(weight, None, None, rule)
            out = torch.matmul(flat, effective.t())
        else:
            masks = _ExampleMasks(
                drop_prob, self.rng(weight.device, "weight"), (batch, *weight.shape), self.recalibration, self.eps, self.keep_last, dtype=weight.dtype
            )
            out = _PerExampleLinear.apply(flat, weight, masks, rule)
        bias = layer._parameters["bias"]
        if bias is not None:
            if self.drop_bias:
                bias, _ = self._masked(bias, "bias", batch)
            # a per-example bias mask gives (batch, out); the first step's unmasked bias is (out,)
            out = out + (bias.unsqueeze(1) if bias.dim() == 2 else bias)
        if self.keep_last:
            drawn = None if masks is None else (drop_prob, masks.keep, masks.scale)
            self.last = self._step_record(drawn, self.recorded_signal("weight", weight))
        return out.reshape(*x.shape[:-1], weight.shape[0])


class DropConnect(WeightDrop):
    """DropConnect (Wan et al. 2013): every edge dropped with the same ``p``.

    One mask per forward pass shared by the mini-batch (``mask="batch"``, as
    the reference code's baseline) or one per example (``mask="sample"``,
    Wan et al.; nn.Linear only). Per-example masks are made a chunk of
    examples at a time (about :data:`EXAMPLE_CHUNK_EDGES` edges) and made
    again in backward, so memory is a chunk's, not ``batch x out x in``; the
    compute still grows with ``batch x out x in``.

    Shapes and options as :class:`WeightDrop`; the drop probability is a
    0-dim tensor ``p``. Source: Wan et al. (2013), "Regularization of neural
    networks using DropConnect", ICML; docs/method.md §5.

    Raises:
        ValueError: ``p`` outside [0, 1], or a :class:`WeightDrop` option.
    """

    name = "dropconnect"

    def __init__(self, *, p: float = 0.5, **options):
        super().__init__(**options)
        check_probability("p", p)
        self.p = float(p)

    def extra_repr(self) -> str:
        """The options in the module's repr.

        Raises:
            Nothing.
        """
        return (
            f"p={self.p}, mask={self.mask!r}, recalibration={self.recalibration!r}, "
            f"update={self.update!r}, drop_bias={self.drop_bias}"
        )

    def _uniform(self, param: Tensor) -> Tensor:
        return torch.full((), self.p, dtype=work_dtype(param.dtype), device=param.device)

    def weight_drop_prob(self, weight):
        """``p`` as a 0-dim tensor (every edge of ``weight`` alike).

        Raises:
            Nothing.
        """
        return self._uniform(weight)

    def bias_drop_prob(self, bias):
        """``p`` as a 0-dim tensor (every entry of ``bias`` alike).

        Raises:
            Nothing.
        """
        return self._uniform(bias)


class DynamicDropConnect(WeightDrop):
    """Dynamic DropConnect (Yang & Chen 2025): per-edge drop rates from gradients.

    Each training forward pass drops edge ``(i, j)`` with probability
    ``p_base + p_signal * q_ij`` where ``q`` comes from the z-scored magnitude of
    the signal (see :func:`ddc.functional.drop_probability`). Options and
    defaults (the reference code's unless noted):

    - ``p_base=0.3``, ``p_signal=0.5``, ``tau=0.5``;
    - ``prefer="small"`` (drop small-gradient edges; ``"big"`` is the inverse ablation);
    - ``signal="grad"`` (``"weight"`` uses ``|W|``: the DropSmallW/DropBigW ablations);
    - ``normalize="zscore"`` (``none``, ``mean``, ``rank``); ``scope="layer"``
      (``row``: per output unit; ``global``: across all layers of one ``apply``);
    - ``signal_source="effective"``: the signal is the dense ``dL/dW_eff``;
      ``"param"`` uses the masked ``dL/dW`` (shows the feedback loop);
    - ``grad_ema=0.0``: 0 uses the last step's gradient; ``d`` in (0, 1) keeps
      ``d * ema + (1 - d) * |g|`` (our extension);
    - ``mask="batch"``, ``recalibration="realized"``;
    - ``update="autograd"`` (gradient through the mask, our default);
      ``"reference"`` reproduces the authors' dense update;
    - ``first_step="passthrough"`` (no mask until a gradient exists, as the
      reference); ``"base"`` drops every edge with ``p_base`` meanwhile;
    - ``drop_bias=False``: biases (with their own signal statistics) are masked too when True.

    ``compile_masks`` (False; set by ``ddc.apply(..., compile=True)``, not an
    option of the run's config) builds each step's drop probabilities and
    mask with one ``torch.compile`` kernel instead of the blocked eager path
    (``ddc._fastpath``): the same masks up to float rounding inside the kernel.

    The signal is DDC's own: no stored signal, EMA or statistic shares memory
    with ``.grad``, the weight or a tensor handed to a hook, so clipping,
    zeroing or cleaning gradients in place never changes the next drop
    probabilities (see :class:`_MaskedWeight`; the weight signal is read when
    the mask is drawn).

    Non-finite signals, one rule for every option (normalisation, scope,
    ``grad_ema``, ``signal_source``): if the gradient behind this step's signal
    holds inf/NaN anywhere in the layer, every edge of the layer gets
    ``p_base`` for the step (a DropConnect step; the effective weights stay
    finite), ``nonfinite_steps`` counts the step, and a ``RuntimeWarning`` is
    issued once per layer (on the CPU at once; on accelerators at the next
    ``eval()``, so that training never waits on the device). With
    ``grad_ema`` such a gradient does not enter the average. With
    ``scope="global"`` the pooled statistics leave such a layer out.

    Shapes and units: the signal ``S`` has the weight's shape (``dL/dW_eff``,
    in the loss's units per weight unit; ``|W|`` with ``signal="weight"``);
    the drop probabilities have the weight's shape, in [0, 1]; masks as
    :class:`WeightDrop`.
    Source: Yang & Chen (2025), arXiv 2502.19948, the DDC method (per-edge
    rates from z-scored gradient magnitudes); docs/method.md §1 (the formula,
    ablations of normalisation and scope), §2 (mask, re-calibration, first
    step), §3 (signal and update rules).

    Raises:
        ValueError: ``p_base``/``p_signal`` outside [0, 1] or summing above 1,
            ``tau`` outside (0, 1), ``grad_ema`` outside [0, 1), any other
            option outside its allowed values (the message names it), or a
            :class:`WeightDrop` option.
    """

    name = "ddc"
    compile_masks = False
    SIGNALS = ("grad", "weight")
    SIGNAL_SOURCES = ("effective", "param")
    FIRST_STEPS = ("passthrough", "base")
    SCOPES = ("layer", "row", "global")

    def __init__(
        self,
        *,
        p_base: float = 0.3,
        p_signal: float = 0.5,
        tau: float = 0.5,
        prefer: str = "small",
        signal: str = "grad",
        normalize: str = "zscore",
        scope: str = "layer",
        signal_source: str = "effective",
        grad_ema: float = 0.0,
        first_step: str = "passthrough",
        **options,
    ):
        super().__init__(**options)
        check_drop_config(p_base, p_signal, tau)
        check_choice("prefer", prefer, PREFER)
        check_choice("signal", signal, self.SIGNALS)
        check_choice("normalize", normalize, NORMALIZE)
        check_choice("scope", scope, self.SCOPES)
        check_choice("signal_source", signal_source, self.SIGNAL_SOURCES)
        check_choice("first_step", first_step, self.FIRST_STEPS)
        if not isinstance(grad_ema, (int, float)) or isinstance(grad_ema, bool) or not 0.0 <= grad_ema < 1.0:
            raise ValueError(f"grad_ema={grad_ema!r} must lie in [0, 1) (0 = last step only)")
        self.p_base, self.p_signal, self.tau = float(p_base), float(p_signal), float(tau)
        self.prefer, self.signal, self.normalize, self.scope = prefer, signal, normalize, scope
        self.signal_source, self.grad_ema, self.first_step = signal_source, float(grad_ema), first_step
        #: set by ``apply`` when scope="global": shares statistics across layers
        self.global_stats: Optional[GlobalStats] = None
        for role in ("weight", "bias"):
            self.register_buffer(f"{role}_signal", None, persistent=False)
            # grad_ema > 0: whether the last gradient was finite, and whether the EMA holds one
            self.register_buffer(f"{role}_signal_finite", None, persistent=False)
            self.register_buffer(f"{role}_ema_valid", None, persistent=False)
        self.register_buffer("nonfinite_steps", torch.zeros((), dtype=torch.long), persistent=False)
        # Several masked weights before one backward (several forward passes): their gradients add up.
        self._open: dict = {}  # role -> masked weights made whose gradient has not come back
        self._collecting: dict = {}  # role -> (gradients still expected, their sum so far, signal and EMA state before)
        self._warned_nonfinite = False
        self._checked_nonfinite = 0  # (accelerators: nonfinite_steps when last looked at, at eval())

    def extra_repr(self) -> str:
        """The options in the module's repr.

        Raises:
            Nothing.
        """
        return (
            f"p_base={self.p_base}, p_signal={self.p_signal}, tau={self.tau}, prefer={self.prefer!r}, "
            f"signal={self.signal!r}, normalize={self.normalize!r}, scope={self.scope!r}, "
            f"signal_source={self.signal_source!r}, grad_ema={self.grad_ema}, mask={self.mask!r}, "
            f"recalibration={self.recalibration!r}, update={self.update!r}, "
            f"first_step={self.first_step!r}, drop_bias={self.drop_bias}"
        )

    # ---- signal -------------------------------------------------------------

    def gradient_sink(self, role):
        """The callback that keeps ``role``'s new gradient signal, or None for ``signal="weight"``.

        Raises:
            Nothing.
        """
        if self.signal != "grad":
            return None
        return functools.partial(self._store_signal, role)

    @torch.no_grad()
    def _store_signal(self, role: str, grad_eff: Optional[Tensor], grad_param: Optional[Tensor]) -> None:
        """Keep the new signal (``dL/dW_eff``, or ``dL/dW`` with ``signal_source="param"``).

        The backward hands over a tensor that autograd never sees (see
        :class:`_MaskedWeight`), so keeping a reference is owning it. Under
        torch.func transforms the plain gradient is kept (summed over vmap's
        batch); under DDP the ranks' gradients are averaged first, so every
        rank draws from the same signal. The first backward of masked weights
        made since the last one begins a new signal, later ones add to it.
        """
        grad = plain((grad_eff if grad_param is None else grad_param).detach())
        if self._group is not None:
            grad = grad.clone()  # (the backward may still read it: dL/dW is made from dL/dW_eff after this)
            torch.distributed.all_reduce(grad, group=self._group)
            grad.div_(torch.distributed.get_world_size(self._group))
        name = f"{role}_signal"
        collecting = self._collecting.pop(role, None)
        if collecting is None:  # the first gradient since masked weights were made: a new signal
            previous, valid = getattr(self, name), getattr(self, f"{role}_ema_valid")
            expected = self._open.get(role, 1) - 1
        else:  # another use of the same forward passes: add it in
            expected, total, previous, valid = collecting
            grad = total + grad
            setattr(self, f"{role}_ema_valid", valid)
        self._open[role] = 0
        if expected > 0:  # more gradients of these forward passes are to come
            self._collecting[role] = (expected - 1, grad, previous, valid)
        new = grad if self.grad_ema == 0.0 else self._blend(role, grad, previous)
        setattr(self, name, new)
        if self.global_stats is not None and role == "weight":
            self.global_stats.invalidate()

    def _node_made(self, role):
        if role in self._collecting:  # a new forward pass after a backward: its gradients start anew
            del self._collecting[role]
            self._open[role] = 0
        self._open[role] = self._open.get(role, 0) + 1

    def _blend(self, role: str, grad: Tensor, previous: Optional[Tensor]) -> Tensor:
        """``d * ema + (1 - d) * |g|``. A gradient with inf/NaN leaves the average as it was
        (and marks the next step non-finite); the first finite one starts it."""
        magnitude = grad.abs()
        finite = torch.isfinite(magnitude).all()
        valid = getattr(self, f"{role}_ema_valid")
        if previous is None or valid is None:
            new, valid = magnitude, finite
        elif magnitude.device.type == "cpu":  # looking is free: one op instead of three
            new = (torch.lerp(magnitude, previous, self.grad_ema) if bool(valid) else magnitude) if bool(finite) else previous
            valid = valid | finite
        else:
            started = torch.where(valid, torch.lerp(magnitude, previous, self.grad_ema), magnitude)
            new = torch.where(finite, started, previous)
            valid = valid | finite
        setattr(self, f"{role}_signal_finite", finite)
        setattr(self, f"{role}_ema_valid", valid)
        return new

    def signal_tensor(self, role: str, param: Tensor) -> Optional[Tensor]:
        """``param`` detached (``signal="weight"``), else the kept gradient signal of ``role`` (None before one).

        Raises:
            AttributeError: ``role`` is neither ``"weight"`` nor ``"bias"`` (``signal="grad"``).
        """
        if self.signal == "weight":
            return param.detach()
        return getattr(self, f"{role}_signal")

    def recorded_signal(self, role: str, param: Tensor) -> Optional[Tensor]:
        """:meth:`signal_tensor`, cloned for a weight signal (the step changes the weight in place).

        Raises:
            AttributeError: ``role`` is neither ``"weight"`` nor ``"bias"`` (``signal="grad"``).
        """
        # The weight changes in place at the optimizer step: a recorder gets a copy of the one used.
        signal = self.signal_tensor(role, param)
        return signal.clone() if self.signal == "weight" and signal is not None else signal

    # ---- drop probability ---------------------------------------------------

    def _formula(self) -> dict:
        """The options of :func:`ddc.functional.drop_probability` this layer uses."""
        return dict(
            p_base=self.p_base,
            p_signal=self.p_signal,
            tau=self.tau,
            prefer=self.prefer,
            normalize=self.normalize,
            scope="layer" if self.scope == "global" else self.scope,
            eps=self.eps,
        )

    def _summary(self, role: str, signal: Tensor):
        """``(stats, finite)`` behind this step's drop probabilities: the normalisation's
        ``(mean, sd)`` (None for ``none``/``rank``) and whether the signal is finite
        (a Python bool on the CPU, a 0-dim bool tensor elsewhere)."""
        stats = None
        if self.normalize in ("zscore", "mean"):
            if self.global_stats is not None and role == "weight":
                stats, finite = self.global_stats.get(self)
            else:
                stats = streamed_stats(signal, self._formula()["scope"], want_sd=self.normalize == "zscore")
                # (the mean, accumulated per block and merged in float64, is finite exactly when every entry is)
                finite = torch.isfinite(stats[0]).all()
        else:
            finite = torch.isfinite(signal).all()
        last = getattr(self, f"{role}_signal_finite") if self.signal == "grad" and self.grad_ema > 0 else None
        if last is not None:
            finite = finite & last
        return stats, bool(finite) if signal.device.type == "cpu" else finite

    def _count_nonfinite(self, finite) -> None:
        if isinstance(finite, bool):
            if finite:
                return
            self.nonfinite_steps += 1
            self._warn_nonfinite()
        else:
            self.nonfinite_steps += ~finite  # no host sync: looked at in eval()

    def _warn_nonfinite(self) -> None:
        if not self._warned_nonfinite:
            self._warned_nonfinite = True
            warnings.warn(
                f"ddc: non-finite gradient signal{self._named()}; every edge of the layer gets p_base for "
                "such steps (counted in nonfinite_steps). This warning is shown once per layer.",
                RuntimeWarning,
                stacklevel=4,
            )

    def train(self, mode: bool = True):
        """``nn.Module.train``; entering eval warns once if non-finite signals were counted on an accelerator.

        Raises:
            Nothing (the warning is a ``RuntimeWarning``).
        """
        # Accelerators: the count lives on the device; look at it when training pauses.
        if not mode and not self._warned_nonfinite and self.nonfinite_steps.device.type != "cpu":
            if int(self.nonfinite_steps) > self._checked_nonfinite:
                self._warn_nonfinite()
            self._checked_nonfinite = int(self.nonfinite_steps)
        return super().train(mode)

    def draw_mask(self, role, param, shape):
        """Fast path: drop probabilities and mask in one blocked pass (``ddc._fastpath.drop_and_keep``).

        Same masks as ``keep_mask(weight_drop_prob(...), generator=...)``; the
        drop probabilities are only materialised when a recorder or the
        re-calibration needs them. For a recorder on a weight of at least
        :data:`LAZY_DROP_PROB_NUMEL` edges they are not (``None``): the
        step's record gets the statistics instead (``drop_prob_options`` of
        :class:`ddc.record.StepRecord`), from which a recorder computes the
        subset it reads. Rank normalisation and per-example masks take the
        general path.

        Raises:
            ValueError: this method's generator is on another device type (:meth:`rng`).
        """
        signal = self.signal_tensor(role, param)
        if signal is None or self.normalize == "rank" or tuple(shape) != tuple(param.shape) or vmap_active():
            return super().draw_mask(role, param, shape)
        formula = self._formula()
        lazy = (
            self.keep_last
            and role == "weight"
            and self.recalibration in ("realized", "none")
            and self.signal == "grad"  # a weight signal changes in place after the step
            and formula["scope"] == "layer"
            and param.numel() >= LAZY_DROP_PROB_NUMEL
        )
        with torch.no_grad():
            stats, finite = self._summary(role, signal.detach())
            self._count_nonfinite(finite)
            used = [] if lazy else None
            drop_prob, keep, _ = drop_and_keep(
                signal.detach(),
                **formula,
                stats=stats,
                finite=finite,
                generator=self.rng(param.device, role),
                want_prob=self._needs_drop_prob() and not lazy,
                stats_out=used,
                compile=self.compile_masks,
            )
        if lazy:  # (read by _step_record: the record computes them from the signal)
            mean, sd = used
            stats = None if mean is None else (mean, sd)
            self.__dict__["_drop_prob_options"] = dict(formula, stats=stats, finite=finite)
        return drop_prob, keep

    def _drop_prob(self, role: str, param: Tensor) -> Optional[Tensor]:
        signal = self.signal_tensor(role, param)
        if signal is None:
            if self.first_step == "passthrough":
                return None
            return torch.full((), self.p_base, dtype=work_dtype(param.dtype), device=param.device)
        with torch.no_grad():
            stats, finite = self._summary(role, signal.detach())
            self._count_nonfinite(finite)
            return drop_probability(signal.detach(), **self._formula(), stats=stats, finite=finite)

    def weight_drop_prob(self, weight):
        """Per-edge drop probabilities from the signal (``weight``'s shape), ``p_base`` or None before one.

        Raises:
            Nothing of its own.
        """
        return self._drop_prob("weight", weight)

    def bias_drop_prob(self, bias):
        """As :meth:`weight_drop_prob`, for ``bias``.

        Raises:
            Nothing of its own.
        """
        return self._drop_prob("bias", bias)

    def method_state(self) -> dict:
        """Copies of the method's buffers (signals, EMA state, counters).

        Raises:
            Nothing.
        """
        return {name: value.clone() for name, value in self.named_buffers(recurse=False) if value is not None}

    def load_method_state(self, state: dict) -> None:
        """Restore :meth:`method_state`'s output (copies of its tensors).

        Raises:
            ValueError: ``state`` holds keys this method does not know.
        """
        state = dict(state)
        for name in list(self._buffers):
            if name in state:
                # A copy: the state's tensors stay the caller's.
                setattr(self, name, state.pop(name).clone())
        super().load_method_state(state)


#: Weights from this many edges up hand a recorder the statistics behind their drop
#: probabilities instead of the probabilities (see ``DynamicDropConnect.draw_mask``).
LAZY_DROP_PROB_NUMEL = 1 << 22


class GlobalStats:
    """Mean and unbiased std of ``|signal|`` pooled across several DDC layers (``scope="global"``).

    Recomputed lazily at most once per backward pass, by combining each
    layer's (count, mean, M2) with Chan's parallel formula, in float64. A
    layer whose signal is not finite is left out of the pool (it falls back to
    ``p_base`` on its own); no host synchronisation. Both statistics are
    0-dim tensors in the signal's units and work dtype.
    Source: docs/method.md §1 (scope ablation); Chan, Golub & LeVeque (1979)
    for the pooled moments.

    Raises:
        RuntimeError: :meth:`get` before any layer has a gradient signal.
    """

    def __init__(self, methods):
        self.methods = list(methods)
        self._cached: Optional[tuple] = None

    def invalidate(self) -> None:
        """Forget the pooled statistics (a new backward pass brings new signals).

        Raises:
            Nothing.
        """
        self._cached = None

    def get(self, method=None):
        """``((mean, sd), finite)``: the pooled statistics, and whether ``method``'s own signal is finite.

        Raises:
            RuntimeError: no layer has a gradient signal yet.
        """
        if self._cached is None:
            self._cached = self._compute()
        stats, finite = self._cached
        return stats, finite.get(id(method), True)

    def _compute(self):
        means, m2s, counts, finite = [], [], [], {}
        for method in self.methods:
            if method.weight_signal is None:
                continue
            magnitude = _as_work(method.weight_signal).abs()
            var, mean = torch.var_mean(magnitude, correction=0)
            included = torch.isfinite(mean)
            if method.grad_ema > 0 and method.weight_signal_finite is not None:
                included = included & method.weight_signal_finite
            finite[id(method)] = included
            zero = torch.zeros((), dtype=mean.dtype, device=mean.device)
            means.append(torch.where(included, mean, zero))
            m2s.append(torch.where(included, var * magnitude.numel(), zero))
            counts.append(included * magnitude.numel())
        if not means:
            raise RuntimeError("GlobalStats.get() called before any layer has a gradient signal")
        wide = torch.float64
        means_t, m2s_t = torch.stack(means).to(wide), torch.stack(m2s).to(wide)
        counts_t = torch.stack(counts).to(wide)
        total = counts_t.sum()
        mean = (means_t * counts_t).sum() / total
        m2 = m2s_t.sum() + (counts_t * (means_t - mean).square()).sum()
        sd = torch.sqrt(m2 / torch.clamp(total - 1, min=1))
        return (mean.to(means[0].dtype), sd.to(means[0].dtype)), finite


class NoMethod(LayerMethod):
    """The no-regularisation baseline: attaches nothing (``apply`` keeps no layers).

    Source: docs/method.md §5 (no-drop baseline). Raises nothing.
    """

    name = "none"


METHODS = {
    "none": NoMethod,
    "dropout": Dropout,
    "dropconnect": DropConnect,
    "standout": Standout,
    "ddc": DynamicDropConnect,
}
