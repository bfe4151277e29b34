"""Open question 07: a learned gradient -> drop-rate mapping, against DDC's fixed formula.

DDC turns each edge's normalised gradient magnitude ``z`` into a drop
probability with a fixed curve, ``p = p_base + p_signal * c * [c > tau]``,
``c = sigmoid(-z)``. Here a small network ``f_phi`` over per-edge features

    (z(|g|), z(|w|), z(EMA of |g|), layer index)

outputs a logit per edge, and the drop probability is
``p = sigmoid(f_phi(x) + b)``, where the scalar shift ``b`` is solved at every
step so that **the mean drop probability equals the mean of DDC's formula on the
same gradient signal** (a matched drop budget; DDC only decides how to spread
it). ``phi`` is trained on held-out batches by a one-step look-ahead
(hypergradient): a relaxed-Bernoulli (Concrete) keep mask ``m(p)`` gives
``W_eff = W * m / mean(m)``, one SGD step ``W' = W - lr * dL_train(W_eff)/dW``
is taken inside the graph, and the held-out loss ``L_meta(W')`` is
back-propagated to ``phi``.

Where the methods act (``RunConfig.layers``; every masked method, ``ddc``,
``uniform`` and ``learned``, acts on the same layers, so the comparison stays
matched):

- ``"fc"`` (default): the classifier head named by ``RunConfig.layer`` (``fc``
  of ResNet-20, 64 x 10 edges; ``linear2`` of SimpleCNN1 for the MNIST-1D
  fallback). The look-ahead only needs the head's (detached) input features
  (:func:`meta_step`, the fast path).
- ``"last_stage"``: the convolutions of the last residual stage
  (``layer3.*.conv*`` of ResNet-20: 6 layers, 202,752 edges; CIFAR ResNets only).
- ``"fc+last_stage"``: both (7 layers).

With several layers one mapping ``f_phi`` is shared by all of them and the
layer feature is the layer's normalised position in model order,
``position / (number of layers - 1)`` (0 for the first, 1 for the last; 0 with
one layer, so ``"fc"`` keeps a constant feature). **The budget is matched per
layer**: every layer has its own scalar shift ``b_l`` that pins that layer's
mean drop probability to the mean of DDC's formula on that layer's signal
(DDC z-scores per layer, so it sets a budget per layer). The recorded
``mean_drop`` / ``target`` of a step are the edge-weighted means over the
mapped layers (the fraction of mapped edges dropped); per-layer values are
recorded as ``mean_drop[<layer>]`` / ``target[<layer>]`` when there are
several layers.

The look-ahead over convolutions (:func:`meta_step_layers`): the input of the
last stage is captured (detached) on the training batch during the real step
and on the meta batch in an eval-mode forward; the one-step-updated weights
``W'`` of the mapped layers are formed inside the graph and only the tail of
the network (last stage, pooling, head) is re-run with
``torch.func.functional_call``, every other parameter detached. BatchNorm:
batch statistics on the training side (as in the real step), on copies of the
running statistics so the model's own are never written; **eval mode** (running
statistics) on the meta side, as the head-only path and model selection do,
so the held-out loss does not depend on the meta batch's composition.

The last layer of ``f_phi`` starts at zero, so the learned mapping starts as
DropConnect at DDC's matched rate (method ``uniform`` keeps it there: the
control that separates "which edges" from "how many").

Held-out data: the validation split is halved with a seeded permutation; the
``meta`` half trains ``phi`` (learned method only), the ``select`` half picks
the best epoch for every method. The learned method therefore sees labels
(of the meta half) that the others do not, through one scalar per step.

Reported per run: test accuracy/loss at the best-validation epoch, the
training-set accuracy of that same checkpoint in eval mode (``train_acc``; its
gap to ``test_acc`` shows whether the run is in the overfitting regime), a
learning curve (``val_acc`` on the select half, on each epoch's last trajectory
row) and the wall time split into training steps, meta steps (the meta batch's
backbone forward plus the look-ahead) and evaluation (``seconds_*``).

Cost (measured, 1 CPU thread, CPU time): a ResNet-20 training step on 50
Fashion-MNIST images takes about 0.14 s; an eval-mode forward about 1 ms per
image, so a learned-mapping meta step (a 50-image backbone forward and a
head-sized look-ahead) adds about 30 %. Evaluating the select half (250
images) once per epoch costs about a tenth of an epoch of 1000 images. With
``layers="fc+last_stage"`` (measured the same way, batches of 50, both settings in one
process on a busy machine, so as a ratio) a learned step costs about 2.4 times a
head-only learned step (0.43 s against 0.18 s: the look-ahead over the last stage
is 0.24 s of it), and a uniform step about 1.25 times a head-only one.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddc import functional as dfn
from ddc.train import Callback
from ddc import WeightDrop, disabled

NOTEBOOK = "07_oq_learned_mapping"
FEATURES = ("z_grad", "z_weight", "z_ema", "layer")
METHODS = ("none", "uniform", "ddc", "learned")
#: where the methods act: the head, the last residual stage's convolutions, or both
LAYER_SETS = ("fc", "last_stage", "fc+last_stage")
MASK_SEED_OFFSET = 1_000_003
EPS = 1e-9
P_CLAMP = 1e-4


# ----------------------------------------------------------------------------- maths


def zscore(a: Tensor) -> Tensor:
    """``(a - mean) / (std + eps)`` over the whole tensor: DDC's score (layer scope), from ``ddc.functional``.

    Raises:
        Nothing of its own: the options it passes to :func:`ddc.functional.normalized_signal` are valid.
    """
    return dfn.normalized_signal(a, normalize="zscore", scope="layer", eps=EPS)


def edge_features(signal: Tensor, weight: Tensor, ema: Tensor, layer_index: float = 0) -> Tensor:
    """Per-edge features ``(numel, 4)``: z(|g|), z(|w|), z(EMA |g|), layer index (normalised position).

    Raises:
        RuntimeError: ``signal``, ``weight`` and ``ema`` differ in number of elements.
    """
    columns = [zscore(signal.abs()), zscore(weight.abs()), zscore(ema.abs()), torch.full_like(weight, float(layer_index))]
    return torch.stack([c.reshape(-1) for c in columns], 1)


class Mapping(nn.Module):
    """``features (n, 4) -> logit (n,)``: a tanh MLP whose last layer starts at zero.

    Raises:
        RuntimeError: ``hidden`` is negative (torch's tensor-size error).
    """

    def __init__(self, hidden: int = 16, *, seed: int = 0):
        super().__init__()
        self.hidden_layer = nn.Linear(len(FEATURES), hidden)
        self.out = nn.Linear(hidden, 1)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            bound = 1.0 / math.sqrt(len(FEATURES))
            self.hidden_layer.weight.copy_((torch.rand(self.hidden_layer.weight.shape, generator=generator) * 2 - 1) * bound)
            self.hidden_layer.bias.copy_((torch.rand(hidden, generator=generator) * 2 - 1) * bound)
            self.out.weight.zero_()
            self.out.bias.zero_()

    def forward(self, features: Tensor) -> Tensor:
        """``features (n, 4)`` to one logit per edge, ``(n,)``.

        Raises:
            RuntimeError: the last dimension of ``features`` is not 4.
        """
        return self.out(torch.tanh(self.hidden_layer(features))).squeeze(-1)


def matched_shift(logits: Tensor, target: float, iterations: int = 60) -> Tensor:
    """The scalar ``b`` with ``mean(sigmoid(logits + b)) = target``, differentiable in ``logits``.

    Bisection (no gradient) to float precision, then one Newton step inside
    the graph: at the root its derivative is the implicit-function one,
    ``db/dl_i = -s_i (1 - s_i) / sum_j s_j (1 - s_j)``.

    Raises:
        ValueError: ``target`` is not in (0, 1).
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"target={target!r} must lie in (0, 1)")
    with torch.no_grad():
        # on tensors throughout: no host round trip per iteration (a GPU step would stall 60 times)
        flat = logits.detach().double().reshape(-1)
        centre = math.log(target / (1 - target))
        low, high = centre - flat.max() - 1.0, centre - flat.min() + 1.0
        for _ in range(iterations):
            mid = 0.5 * (low + high)
            below = torch.sigmoid(flat + mid).mean() < target
            low, high = torch.where(below, mid, low), torch.where(below, high, mid)
        b0 = (0.5 * (low + high)).to(logits.dtype)
    s = torch.sigmoid(logits + b0)
    slope = (s * (1 - s)).mean().clamp_min(EPS)
    return b0 - (s.mean() - target) / slope


def matched_probability(logits: Tensor, target: float) -> Tensor:
    """Drop probabilities ``sigmoid(logits + b)`` whose mean is ``target``.

    Raises:
        ValueError: ``target`` is not in (0, 1) (:func:`matched_shift`).
    """
    return torch.sigmoid(logits + matched_shift(logits, target))


def relaxed_keep(drop_prob: Tensor, temperature: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """Relaxed-Bernoulli (Concrete) keep mask with keep probability ``1 - drop_prob``.

    ``sigmoid((log((1-p)/p) + log(u/(1-u))) / temperature)``, ``u ~ U(0, 1)``.
    ``P(m > 1/2) = 1 - p`` exactly at every temperature; as the temperature
    goes to 0 the mask becomes the Bernoulli one.

    Raises:
        Nothing of its own; ``temperature`` is not checked (0 gives infinite logits).
    """
    p = drop_prob.clamp(P_CLAMP, 1 - P_CLAMP)
    u = torch.rand(p.shape, generator=generator, dtype=p.dtype).to(p.device).clamp(EPS, 1 - EPS)
    return torch.sigmoid((torch.log1p(-p) - torch.log(p) + torch.log(u) - torch.log1p(-u)) / temperature)


def ddc_target(signal: Tensor, p_base: float, p_signal: float, tau: float) -> float:
    """Mean of DDC's drop probability on ``signal``: the budget the learned mapping must match.

    Raises:
        ValueError: ``p_base``, ``p_signal`` or ``tau`` is out of range (:func:`ddc.functional.drop_probability`).
    """
    return float(dfn.drop_probability(signal, p_base=p_base, p_signal=p_signal, tau=tau).double().mean())


def ddc_curve(z: np.ndarray, p_base: float = 0.3, p_signal: float = 0.5, tau: float = 0.5) -> np.ndarray:
    """DDC's fixed curve ``p(z) = p_base + p_signal * c * [c > tau]``, ``c = sigmoid(-z)``
    (:func:`ddc.functional.drop_curve`), on a float64 array of scores.

    Raises:
        ValueError: ``p_base``, ``p_signal`` or ``tau`` is out of range (:func:`ddc.functional.drop_curve`).
    """
    score = torch.tensor(np.asarray(z, dtype=np.float64))  # a copy: z may be a read-only array
    return dfn.drop_curve(score, p_base=p_base, p_signal=p_signal, tau=tau, prefer="small").numpy()


# ----------------------------------------------------------------------------- the method module


class LearnedDropConnect(WeightDrop):
    """DropConnect whose per-edge drop probability comes from a :class:`Mapping`.

    Mean drop probability pinned to DDC's on the same signal (see
    :func:`matched_probability`). The gradient signal is DDC's (dense
    ``dL/dW_eff`` of the last step); ``ema`` keeps ``EMA(|g|)``. No mask before
    the first gradient (DDC's passthrough). The mapping is held outside the
    module tree, so the model's parameters and ``state_dict`` stay plain.

    Raises:
        ValueError: ``p_base``, ``p_signal`` or ``tau`` is out of range (:func:`ddc.functional.check_drop_config`),
            or an option of :class:`ddc.WeightDrop` is outside its allowed values.
        TypeError: an option that :class:`ddc.WeightDrop` does not take.
    """

    name = "learned"

    def __init__(self, mapping: Mapping, *, layer_index: float = 0, ema_decay: float = 0.9,
                 p_base: float = 0.3, p_signal: float = 0.5, tau: float = 0.5, **options):
        super().__init__(**options)
        dfn.check_drop_config(p_base, p_signal, tau)
        self.__dict__["mapping"] = mapping  # not a submodule: the model's optimiser never sees it
        self.layer_index, self.ema_decay = float(layer_index), float(ema_decay)
        self.p_base, self.p_signal, self.tau = float(p_base), float(p_signal), float(tau)
        self.register_buffer("weight_signal", None, persistent=False)
        self.register_buffer("ema_signal", None, persistent=False)
        self.target = float("nan")
        self.shift = float("nan")
        self.mean_drop = float("nan")

    def gradient_sink(self, role):
        """The hook that keeps the weight's gradient signal and its EMA; None for any other role.

        Raises:
            Nothing.
        """
        return self._store if role == "weight" else None

    @torch.no_grad()
    def _store(self, grad_eff: Tensor, grad_param) -> None:
        magnitude = grad_eff.detach().abs()
        self.weight_signal = grad_eff.detach()
        self.ema_signal = magnitude if self.ema_signal is None else torch.lerp(magnitude, self.ema_signal, self.ema_decay)

    def signal_tensor(self, role, param):
        """The stored gradient signal of the weight (None before the first backward pass, and for any other role).

        Raises:
            Nothing.
        """
        return self.weight_signal if role == "weight" else None

    def features(self, weight: Tensor) -> Tensor:
        """Per-edge features ``(numel, 4)`` of ``weight`` (:func:`edge_features`) from the stored signal and its EMA.

        Raises:
            AttributeError: no gradient signal is stored yet (it is None).
        """
        return edge_features(self.weight_signal, weight.detach(), self.ema_signal, self.layer_index)

    def drop_prob(self, weight: Tensor) -> Tensor:
        """Differentiable (in the mapping) drop probabilities of the current signal, mean pinned.

        Raises:
            AttributeError: no gradient signal is stored yet.
            RuntimeError: ``weight`` does not have the stored signal's shape.
            ValueError: DDC's mean drop probability on the signal is 0 or 1, so no budget can be matched
                (:func:`matched_shift`).
        """
        self.target = ddc_target(self.weight_signal, self.p_base, self.p_signal, self.tau)
        logits = self.mapping(self.features(weight)).reshape(weight.shape)
        shift = matched_shift(logits, self.target)
        self.shift = float(shift.detach())
        return torch.sigmoid(logits + shift)

    def weight_drop_prob(self, weight):
        """The drop probabilities of ``weight`` (no gradient through them), or None before the first gradient;
        keeps their mean in ``mean_drop``.

        Raises:
            As :meth:`drop_prob`: a ``weight`` of another shape than the signal (``RuntimeError``), or an
                unmatchable budget (``ValueError``).
        """
        if self.weight_signal is None:
            return None
        with torch.no_grad():
            p = self.drop_prob(weight)
        self.mean_drop = float(p.double().mean())
        return p

    def bias_drop_prob(self, bias):
        """None: the bias is never dropped.

        Raises:
            Nothing.
        """
        return None


def attach(layer: nn.Module, method: LearnedDropConnect):
    """Put ``method`` on ``layer`` the way :func:`ddc.apply` does; returns a function that removes it.

    Raises:
        ValueError: ``layer`` already carries a method, or ``method`` cannot act on it (:func:`ddc.attach`).
    """
    from ddc import attach as attach_method, detach

    attach_method(layer, method, "layer")
    return lambda: detach(layer)


def meta_step(method: LearnedDropConnect, layer: nn.Linear, h_train, y_train, h_meta, y_meta, *, lr: float,
              optimizer: torch.optim.Optimizer, temperature: float, generator: torch.Generator) -> float:
    """One hypergradient update of the mapping; returns the look-ahead held-out loss.

    Raises:
        ValueError: as :meth:`LearnedDropConnect.drop_prob` (no budget can be matched).
        RuntimeError: the batches do not fit ``layer``, or a target is outside its classes.
    """
    weight = layer.weight.detach().clone().requires_grad_(True)
    bias = layer.bias.detach() if layer.bias is not None else None
    p = method.drop_prob(weight)
    keep = relaxed_keep(p, temperature, generator)
    effective = weight * keep / keep.mean()
    loss_train = F.cross_entropy(F.linear(h_train, effective, bias), y_train)
    (grad,) = torch.autograd.grad(loss_train, weight, create_graph=True)
    loss_meta = F.cross_entropy(F.linear(h_meta, weight - lr * grad, bias), y_meta)
    optimizer.zero_grad(set_to_none=True)
    loss_meta.backward()
    optimizer.step()
    return float(loss_meta.detach())


def layer_positions(names: Sequence[str]) -> Dict[str, float]:
    """The layer feature: each mapped layer's position in model order over (number of layers - 1); 0 for one layer.

    Raises:
        Nothing: an empty list gives ``{}``.
    """
    last = max(len(names) - 1, 1)
    return {name: index / last for index, name in enumerate(names)}


def mapped_layers(model: nn.Module, layers: str, head: str) -> List[str]:
    """Qualified names of the layers ``layers`` (one of :data:`LAYER_SETS`) selects, in model order.

    ``fc`` is the head ``head`` (a Linear layer); ``last_stage`` the
    convolutions ``conv1``/``conv2`` of every block of a CIFAR ResNet's last
    stage (``layer3.*.conv*`` for ResNet-20; projection shortcuts excluded).

    Raises:
        ValueError: ``last_stage`` on a model that is not a CIFAR ResNet, or ``head`` is not a Linear layer
            of the model.
    """
    from ddc.models import CifarResNet

    dfn.check_choice("layers", layers, LAYER_SETS)
    names = []
    if "last_stage" in layers.split("+"):
        if not isinstance(model, CifarResNet):
            raise ValueError(f"layers={layers!r} needs a CIFAR ResNet (resnet20, resnet18); "
                             f"{type(model).__name__} has no residual stages: use layers='fc'")
        pattern = f"layer{model.num_stages}.*.conv*"
        names += [name for name, module in model.named_modules()
                  if isinstance(module, nn.Conv2d) and fnmatch.fnmatchcase(name, pattern)]
    if "fc" in layers.split("+"):
        linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
        if head not in linear:
            raise ValueError(f"layer={head!r} must name a Linear layer of {type(model).__name__}: one of {', '.join(linear)}")
        names.append(head)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(names, key=order.__getitem__)


_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _tail(model: nn.Module, entry: str, head: str, weights: Dict[str, Tensor], h: Tensor, *, train: bool) -> Tensor:
    """A CIFAR ResNet's forward from the last stage ``entry`` on (stage, pooling, head), as logits.

    ``weights`` substitutes the mapped layers' weights (qualified names); every
    other parameter enters detached. ``train``: BatchNorm with batch statistics,
    on copies of the running statistics (the model's own are left untouched);
    otherwise eval mode (running statistics).
    """
    stage = model.get_submodule(entry)
    prefix = entry + "."
    state = {name: value.detach() for name, value in stage.named_parameters()}
    state.update({name[len(prefix):] + ".weight": w for name, w in weights.items() if name.startswith(prefix)})
    if train:
        state.update({name: value.clone() for name, value in stage.named_buffers() if name.rsplit(".", 1)[-1] in _BN_BUFFERS})
    was_training = stage.training
    stage.train(train)
    try:
        out = torch.func.functional_call(stage, state, (h,))
    finally:
        stage.train(was_training)
    out = model.flatten(model.avgpool(out))
    layer = model.get_submodule(head)
    bias = layer.bias.detach() if layer.bias is not None else None
    return F.linear(out, weights[head] if head in weights else layer.weight.detach(), bias)


def meta_step_layers(methods: Dict[str, LearnedDropConnect], model: nn.Module, entry: str, head: str,
                     h_train, y_train, h_meta, y_meta, *, lr: float, optimizer: torch.optim.Optimizer,
                     temperature: float, generator: torch.Generator) -> float:
    """One hypergradient update of the mapping over several layers (last stage and/or head).

    ``h_train`` / ``h_meta``: the (detached) inputs of the last stage ``entry``
    on the training and meta batches. Each mapped layer gets its relaxed mask
    (its own matched shift); ``W' = W - lr * dL_train(W_eff)/dW`` is formed in
    the graph for all of them at once, and the held-out loss of the tail with
    ``W'`` is back-propagated to the mapping. Returns that loss.

    Raises:
        AttributeError: a name in ``methods`` or ``head`` is not a submodule of ``model``, or ``model`` is not a
            CIFAR ResNet (no ``avgpool``/``flatten``).
        RuntimeError: the batches do not fit the last stage, or a target is outside the classes.
        ValueError: as :meth:`LearnedDropConnect.drop_prob` (no budget can be matched).
    """
    layers = {name: model.get_submodule(name) for name in methods}
    weights = {name: layer.weight.detach().clone().requires_grad_(True) for name, layer in layers.items()}
    effective = {}
    for name, method in methods.items():
        keep = relaxed_keep(method.drop_prob(weights[name]), temperature, generator)
        effective[name] = weights[name] * keep / keep.mean()
    with disabled(*layers.values()):
        # training side: batch statistics, as in the real step (on copies of the running statistics)
        loss_train = F.cross_entropy(_tail(model, entry, head, effective, h_train, train=True), y_train)
        grads = torch.autograd.grad(loss_train, list(weights.values()), create_graph=True)
        updated = {name: weights[name] - lr * grad for name, grad in zip(weights, grads)}
        # meta side: eval mode (running statistics), as the head-only path, model selection and testing;
        # the held-out loss then does not depend on how the meta batch normalises itself
        loss_meta = F.cross_entropy(_tail(model, entry, head, updated, h_meta, train=False), y_meta)
    optimizer.zero_grad(set_to_none=True)
    loss_meta.backward(inputs=list(optimizer.param_groups[0]["params"]))
    optimizer.step()
    return float(loss_meta.detach())


# ----------------------------------------------------------------------------- one run


@dataclass
class RunConfig:
    """One learned-mapping run's settings: data, model, where the methods act, DDC's curve and the meta-training.

    Raises:
        ValueError: (at construction) an unknown dataset, model or layer set, a layer set the model
            lacks, a size or count that is not a positive integer, or a drop curve that
            :func:`ddc.functional.check_drop_config` rejects.
    """

    dataset: str = "fashion_mnist"
    model: str = "resnet20"
    layer: str = "fc"  # the head: what ``layers`` calls "fc"
    layers: str = "fc"  # where every method acts: one of LAYER_SETS
    train_subset: int = 400
    val_subset: int = 500
    test_subset: int = 1000
    epochs: int = 6
    batch_size: int = 50
    lr: float = 0.05
    min_lr: float = 0.001
    warmup_epochs: int = 1
    weight_decay: float = 5e-4
    p_base: float = 0.3
    p_signal: float = 0.5
    tau: float = 0.5
    hidden: int = 16
    meta_lr: float = 0.01
    meta_batch: int = 50
    meta_every: int = 1
    temperature: float = 0.5
    ema_decay: float = 0.9
    eval_batch_size: int = 500
    eval_every: int = 1
    record_every: int = 1

    def __post_init__(self):
        """Reject bad settings with the field's name and what is allowed."""
        from ddc import data, models

        dfn.check_choice("dataset", self.dataset, tuple(d for d in data.DATASETS if d != "synthetic"))
        dfn.check_choice("model", self.model, tuple(models.MODELS))
        if not isinstance(self.layer, str) or not self.layer:
            raise ValueError(f"layer={self.layer!r} must be the qualified name of a Linear layer (e.g. 'fc')")
        dfn.check_choice("layers", self.layers, LAYER_SETS)
        if "last_stage" in self.layers.split("+"):
            resnets = tuple(name for name, cls in models.MODELS.items() if issubclass(cls, models.CifarResNet))
            if self.model not in resnets:
                raise ValueError(f"layers={self.layers!r} needs a CIFAR ResNet (model one of {', '.join(resnets)}); "
                                 f"model={self.model!r} has no residual stages: use layers='fc'")
        positive = ("epochs", "batch_size", "hidden", "meta_batch", "meta_every", "eval_batch_size", "eval_every")
        for name in positive + ("train_subset", "val_subset", "test_subset", "record_every"):
            value = getattr(self, name)
            optional = name in ("train_subset", "val_subset", "test_subset")
            minimum = 0 if name == "record_every" else 2 if name == "val_subset" else 1
            if optional and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                extra = " or None (the whole split)" if optional else ""
                raise ValueError(f"{name}={value!r} must be an integer >= {minimum}{extra}")
        for name in ("lr", "meta_lr", "temperature"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{name}={value!r} must be a positive number")
        for name in ("min_lr", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}={value!r} must be a number >= 0")
        if not isinstance(self.warmup_epochs, int) or isinstance(self.warmup_epochs, bool) or self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs={self.warmup_epochs!r} must be an integer >= 0")
        if not isinstance(self.ema_decay, (int, float)) or isinstance(self.ema_decay, bool) or not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay={self.ema_decay!r} must lie in [0, 1)")
        dfn.check_drop_config(self.p_base, self.p_signal, self.tau)


def _hold_out(splits, seed: int):
    """The validation split halved with a seeded permutation: (meta, select)."""
    x, y = splits.val.tensors
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + 4242))
    half = len(x) // 2
    return (x[order[:half]], y[order[:half]]), (x[order[half:]], y[order[half:]])


@torch.no_grad()
def _accuracy_loss(model, x, y, batch_size):
    model.eval()
    correct, total = 0, 0.0
    for start in range(0, len(x), batch_size):
        out = model(x[start : start + batch_size])
        total += float(F.cross_entropy(out, y[start : start + batch_size], reduction="sum"))
        correct += int((out.argmax(1) == y[start : start + batch_size]).sum())
    return correct / len(x), total / len(x)


def load_splits(config: RunConfig, seed: int):
    """The config's train, validation and test splits for ``seed`` (:func:`ddc.data.load`).

    Raises:
        ValueError: a subset size the dataset cannot give.
        FileNotFoundError: the dataset is not on this machine.
    """
    from ddc import data

    return data.load(config.dataset, seed=seed, train_subset=config.train_subset,
                     val_subset=config.val_subset, test_subset=config.test_subset)


def train_run(method: str, seed: int, config: RunConfig, *, device: str = "cpu", splits=None):
    """Train one model with ``method`` (none | uniform | ddc | learned) on the layers ``config.layers``.

    Same initial weights, data order and held-out split for every method of a
    seed. The loop is :func:`ddc.train.fit`: the select half of the held-out
    data chooses the epoch (:class:`ddc.train.Selection`), and
    :class:`_MetaSteps` records each step and takes the meta-steps. Returns
    ``(summary, trajectory, edges, grid)``: one summary row, a per-step record,
    the final per-edge probabilities (ddc/uniform/learned; a ``layer`` column
    names each edge's layer), and the learned mapping on a (z(|g|), z(|w|))
    grid per mapped layer (learned only).

    Raises:
        ValueError: an unknown ``method``, or ``config.layer`` is not a Linear layer of the model.
    """
    from ddc import models
    from ddc.train import Selection, TrainConfig, fit, learning_rate

    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose one of {', '.join(METHODS)}")
    splits = load_splits(config, seed) if splits is None else splits
    (x_meta, y_meta), (x_sel, y_sel) = [(x.to(device), y.to(device)) for x, y in _hold_out(splits, seed)]
    x_train, y_train = (t.to(device) for t in splits.train.tensors)
    torch.manual_seed(seed)  # the same initial weights for every method
    model = models.build(config.model, input_shape=splits.input_shape, num_classes=splits.num_classes).to(device)
    linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if config.layer not in linear:
        raise ValueError(f"layer={config.layer!r} must name a Linear layer of {config.model}: one of {', '.join(linear)}")
    names = mapped_layers(model, config.layers, config.layer)
    layers = {name: model.get_submodule(name) for name in names}
    positions = layer_positions(names)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    schedule = TrainConfig(epochs=config.epochs, lr=config.lr, min_lr=config.min_lr, warmup_epochs=config.warmup_epochs)
    remove, learned, mapping = _put_method(method, seed, model, layers, positions, config, device)
    meta = _MetaSteps(method, seed, model, layers, learned, mapping, config, (x_meta, y_meta))
    seconds_eval = [0.0]

    def validate(trained):
        started = time.perf_counter()
        accuracy, loss = _accuracy_loss(trained, x_sel, y_sel, config.eval_batch_size)
        seconds_eval[0] += time.perf_counter() - started
        return {"acc": accuracy, "loss": loss}

    state = fit(model, optimizer, x_train, y_train, loss_fn=F.cross_entropy, batch_size=config.batch_size,
                order_generator=torch.Generator().manual_seed(seed), epochs=config.epochs,
                learning_rate=lambda epoch: learning_rate(schedule, epoch),
                callbacks=[Selection(model, validate, every=config.eval_every), meta])
    meta.close()
    edges, grid = _edges_and_grid(method, seed, layers, learned, positions, config)
    started = time.perf_counter()
    final_weights = copy.deepcopy(model.state_dict())
    model.load_state_dict(state.best.weights)
    test_acc, test_loss = _accuracy_loss(model, *(t.to(device) for t in splits.test.tensors), config.eval_batch_size)
    train_acc, train_loss = _accuracy_loss(model, x_train, y_train, config.eval_batch_size)  # how well it fits
    model.load_state_dict(final_weights)
    seconds_eval[0] += time.perf_counter() - started
    if remove is not None:
        remove()
    mean_drop = [row["mean_drop"] for row in meta.trajectory if "mean_drop" in row and np.isfinite(row["mean_drop"])]
    best = state.best
    summary = {
        "method": method, "seed": seed, "best_epoch": best.epoch, "val_acc": best.metrics["val"]["acc"],
        "val_loss": best.metrics["val"]["loss"], "test_acc": test_acc, "test_loss": test_loss, "n_test": len(splits.test),
        "train_acc": train_acc,
        "train_loss": train_loss, "generalization_gap": train_acc - test_acc, "final_train_acc": state.train_metrics["acc"],
        "steps": state.step, "mean_drop_rate": float(np.mean(mean_drop)) if mean_drop else 0.0,
        "seconds_train": state.train_time - meta.seconds, "seconds_meta": meta.seconds, "seconds_eval": seconds_eval[0],
    }
    return summary, meta.trajectory, edges, grid


def _put_method(method: str, seed: int, model: nn.Module, layers: Dict[str, nn.Module], positions: Dict[str, float],
                config: RunConfig, device: str):
    """Put ``method`` on ``layers``: ``(remove, learned, mapping)`` (remove None for ``none``; learned and mapping
    only for ``uniform``/``learned``)."""
    from ddc.apply import apply

    names = list(layers)
    ddc_options = dict(p_base=config.p_base, p_signal=config.p_signal, tau=config.tau)
    if method == "ddc":
        return apply(model, "ddc", layers=names, seed=seed + MASK_SEED_OFFSET, **ddc_options).remove, {}, None
    if method not in ("uniform", "learned"):
        return None, {}, None
    mapping = Mapping(config.hidden, seed=seed + 1).to(device)
    rng = _rng(seed)  # one mask generator shared by the layers, as ddc.apply does
    learned = {name: LearnedDropConnect(mapping, layer_index=positions[name], ema_decay=config.ema_decay, rng=rng,
                                        **ddc_options) for name in names}
    removers = [attach(layers[name], learned[name]) for name in names]

    def remove():
        for undo in removers:
            undo()

    return remove, learned, mapping


class _MetaSteps(Callback):
    """The per-step record of a run (drop rate against DDC's target) and, for ``learned``, the meta-steps;
    at the end of an evaluated epoch, its learning-curve point on the epoch's last recorded row."""

    def __init__(self, method, seed, model, layers, learned, mapping, config: RunConfig, meta_split):
        self.method, self.seed, self.model, self.layers, self.learned, self.config = method, seed, model, layers, learned, config
        self.names = list(layers)
        self.sizes = np.array([layers[name].weight.numel() for name in self.names], dtype=float)
        self.x_meta, self.y_meta = meta_split
        self.meta_optimizer = torch.optim.Adam(mapping.parameters(), lr=config.meta_lr) if method == "learned" else None
        self.meta_generator = torch.Generator().manual_seed(seed + 2)
        self.head_only = config.layers == "fc"  # the fast path: the look-ahead needs only the head's input features
        # the look-ahead's input: the head's input (head only), else the last stage's input
        self.entry = config.layer if self.head_only else f"layer{model.num_stages}"
        self.captured = {}
        self.hook = model.get_submodule(self.entry).register_forward_pre_hook(
            lambda module, args: self.captured.__setitem__("h", args[0].detach()))
        self.trajectory, self.seconds = [], 0.0

    def on_step(self, state, step) -> None:
        row = {"method": self.method, "seed": self.seed, "step": step.index, "epoch": step.epoch,
               "train_loss": float(step.loss.detach())}
        if self.learned:
            self._record(row, [self.learned[name].mean_drop for name in self.names],
                         [self.learned[name].target for name in self.names])
        elif self.method == "ddc":
            signals = [self.layers[name].ddc_method.weight_signal for name in self.names]
            config = self.config
            targets = [ddc_target(signal, config.p_base, config.p_signal, config.tau) if signal is not None else float("nan")
                       for signal in signals]
            self._record(row, targets, targets)
        ready = self.learned and all(m.weight_signal is not None for m in self.learned.values())
        if self.method == "learned" and ready and step.index % self.config.meta_every == 0:
            started = time.perf_counter()
            row["meta_loss"] = self._meta_step(step)
            self.seconds += time.perf_counter() - started
        if self.config.record_every and step.index % self.config.record_every == 0:
            self.trajectory.append(row)

    def _meta_step(self, step) -> float:
        config, model = self.config, self.model
        h_train = self.captured["h"]
        pick = torch.randint(len(self.x_meta), (config.meta_batch,), generator=self.meta_generator).to(self.x_meta.device)
        model.eval()
        with torch.no_grad():
            model(self.x_meta[pick])
        h_meta = self.captured["h"]
        options = dict(lr=step.lr, optimizer=self.meta_optimizer, temperature=config.temperature, generator=self.meta_generator)
        if self.head_only:
            return meta_step(self.learned[config.layer], self.layers[config.layer], h_train, step.targets, h_meta,
                             self.y_meta[pick], **options)
        return meta_step_layers(self.learned, model, self.entry, config.layer, h_train, step.targets, h_meta,
                                self.y_meta[pick], **options)

    def _record(self, row, means, targets) -> None:
        """The step's mean drop / target: the layer's (one layer) or edge-weighted over layers, plus per layer."""
        if len(self.names) == 1:
            row.update(mean_drop=means[0], target=targets[0])
            return
        total = self.sizes.sum()
        row.update(mean_drop=float(np.dot(means, self.sizes) / total), target=float(np.dot(targets, self.sizes) / total))
        for name, mean, target in zip(self.names, means, targets):
            row.update({f"mean_drop[{name}]": mean, f"target[{name}]": target})

    def on_epoch_end(self, state) -> None:
        rows, epoch = self.trajectory, state.epoch - 1
        if state.val_metrics is not None and rows and rows[-1]["epoch"] == epoch:  # the learning curve
            rows[-1].update(val_acc=state.val_metrics["acc"], val_loss=state.val_metrics["loss"],
                            running_train_acc=state.train_metrics["acc"])

    def close(self) -> None:
        """Remove the hook that captures the look-ahead's input."""
        self.hook.remove()


def _rng(seed):
    from ddc.methods import MaskRNG

    return MaskRNG(seed=seed + MASK_SEED_OFFSET)


@torch.no_grad()
def _edges_and_grid(method, seed, layers: Dict[str, nn.Module], learned: Dict[str, LearnedDropConnect],
                    positions: Dict[str, float], config: RunConfig):
    import pandas as pd

    edge_tables, grids = [], []
    zg, zw = np.meshgrid(np.linspace(-1.5, 4.0, 45), np.linspace(-1.5, 3.0, 37))  # the mapping's grid (learned only)
    for name, layer in layers.items():
        weight = layer.weight.detach()
        if method == "ddc":
            signal = layer.ddc_method.weight_signal
            ema = signal.abs() if signal is not None else None
        elif learned:
            signal, ema = learned[name].weight_signal, learned[name].ema_signal
        else:
            return None, None
        if signal is None:
            return None, None
        features = edge_features(signal, weight, ema)
        p_ddc = dfn.drop_probability(signal, p_base=config.p_base, p_signal=config.p_signal, tau=config.tau)
        edges = pd.DataFrame({"method": method, "seed": seed, "layer": name, "edge": np.arange(weight.numel()),
                              **{key: features[:, i].cpu().numpy() for i, key in enumerate(FEATURES[:3])},
                              "p_ddc": p_ddc.reshape(-1).double().cpu().numpy()})
        if learned:
            edges["p_learned"] = learned[name].drop_prob(weight).reshape(-1).double().cpu().numpy()
        edge_tables.append(edges)
        if method == "learned":
            inputs = np.stack([zg.ravel(), zw.ravel(), zg.ravel(), np.full(zg.size, positions[name])], 1)
            inputs = torch.tensor(inputs, dtype=weight.dtype)
            p_grid = torch.sigmoid(learned[name].mapping(inputs.to(weight.device)) + learned[name].shift).double().cpu().numpy()
            grids.append(pd.DataFrame({"method": method, "seed": seed, "layer": name, "layer_index": positions[name],
                                       "z_grad": zg.ravel(), "z_weight": zw.ravel(), "p_learned": p_grid,
                                       "p_ddc": ddc_curve(zg.ravel(), config.p_base, config.p_signal, config.tau)}))
    return pd.concat(edge_tables, ignore_index=True), pd.concat(grids, ignore_index=True) if grids else None


def run_all(methods: Sequence[str], seeds: Sequence[int], config: RunConfig, *, device: str = "cpu", log=print):
    """Every (method, seed): four DataFrames ``runs, trajectory, edges, grid``.

    Raises:
        ValueError: an unknown method, a head that is not a Linear layer (:func:`train_run`), or a subset the
            dataset cannot give (:func:`load_splits`).
        FileNotFoundError: the dataset is not on this machine.
    """
    import pandas as pd

    runs, trajectories, edges, grids = [], [], [], []
    for seed in seeds:
        splits = load_splits(config, seed)
        for method in methods:
            started = time.perf_counter()
            summary, trajectory, edge_table, grid = train_run(method, seed, config, device=device, splits=splits)
            summary["seconds"] = time.perf_counter() - started
            runs.append(summary)
            trajectories += trajectory
            edges += [edge_table] if edge_table is not None else []
            grids += [grid] if grid is not None else []
            log(f"{method} seed {seed}: test_acc {summary['test_acc']:.4f}, train_acc {summary['train_acc']:.4f} "
                f"({summary['seconds']:.0f} s: steps {summary['seconds_train']:.0f}, meta {summary['seconds_meta']:.0f}, "
                f"evaluation {summary['seconds_eval']:.0f})")
    empty = pd.DataFrame()
    return (pd.DataFrame(runs), pd.DataFrame(trajectories),
            pd.concat(edges, ignore_index=True) if edges else empty, pd.concat(grids, ignore_index=True) if grids else empty)


def regime(runs, trajectory, *, window: float = 0.2, tolerance: float = 0.01):
    """Every method's regime (:func:`experiments.paper.regime_from_rises`): training and test accuracy, and
    whether its running training accuracy (masks on, per epoch) had stopped rising by the end of the budget.

    Raises:
        AttributeError: ``runs`` lacks ``method`` or ``seed``.
        KeyError: ``trajectory`` lacks ``epoch``, ``method`` or ``seed`` (when it has ``running_train_acc``).
        ValueError: ``window`` is not in (0, 1] (:func:`analysis.stats.trend`).
        As :func:`experiments.paper.regime_from_rises` for the other run columns.
    """
    from analysis import stats

    from experiments import paper

    curves = trajectory.dropna(subset=["running_train_acc"]).sort_values("epoch") if "running_train_acc" in trajectory else trajectory.iloc[:0]
    rise = {key: stats.trend(group.running_train_acc.to_numpy(), window=window)
            for key, group in curves.groupby(["method", "seed"], sort=False)}
    frame = runs.assign(train_rise=[rise.get((m, s), float("nan")) for m, s in zip(runs.method, runs.seed)])
    return paper.regime_from_rises(frame, method_col="method", window=window, tolerance=tolerance)


def mapping_shape(edges):
    """Per (method, seed): how drop probability depends on z(|g|) and z(|w|) on the final edges.

    Spearman correlations of the method's probability with z(|g|) and
    z(|w|), its spread (sd), and its correlation with DDC's formula on the
    same edges. ``p`` is ``p_learned`` for learned/uniform and ``p_ddc`` for ddc.
    One row per (method, seed) over all mapped edges (``layer == "all"``; the
    features are z-scored per layer, so they are on one scale), plus one row
    per (method, seed, layer) when a run maps several layers.

    Raises:
        KeyError: ``edges`` lacks ``method`` or ``seed``.
        AttributeError: it lacks ``p_ddc``, ``z_grad`` or ``z_weight``.
    """
    import pandas as pd
    from scipy.stats import spearmanr

    def describe(group):
        p = group.p_learned if "p_learned" in group and group.p_learned.notna().all() else group.p_ddc
        constant = float(p.std()) < 1e-9

        def rho(other):
            return 0.0 if constant else float(spearmanr(p, other).statistic)

        return {"mean_p": float(p.mean()), "sd_p": float(p.std()), "rho_z_grad": rho(group.z_grad),
                "rho_z_weight": rho(group.z_weight), "rho_p_ddc": rho(group.p_ddc)}

    rows = []
    for (method, seed), group in edges.groupby(["method", "seed"], sort=True):
        rows.append({"method": method, "seed": seed, "layer": "all", **describe(group)})
        if "layer" in group and group.layer.nunique() > 1:
            for layer, part in group.groupby("layer", sort=False):
                rows.append({"method": method, "seed": seed, "layer": layer, **describe(part)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- figures


def figures(run_dir) -> List[str]:
    """Rebuild every figure of the notebook from ``run_dir/results``; returns the files written.

    Raises:
        FileNotFoundError: a table or ``settings.json`` notebook 07 stores is missing from ``run_dir``.
        KeyError: the stored settings lack ``dataset`` or ``model``.
    """
    import matplotlib.pyplot as plt
    from analysis import figures as afig

    from experiments.paper import experiment_title as paper_title
    from experiments.paper import load_json, load_table, save_fig

    settings = load_json(run_dir, "settings")
    runs = load_table(run_dir, "runs")
    where = f"{paper_title(settings['dataset'] + '-' + settings['model'])}"
    ax = afig.method_comparison(runs, value="test_acc", method_col="method")
    ax.set_title(f"{where}: test accuracy at the best-validation epoch")
    written = save_fig(ax, run_dir, "test_acc")
    written += _training_figure(run_dir, settings)
    written += _mapping_figure(run_dir, settings)
    written += _edges_figure(run_dir)
    plt.close("all")
    return written


def _training_figure(run_dir, settings: dict) -> List[str]:
    """Matched drop budget, the mapping's meta-loss and the learning curves over training (none without ``mean_drop``)."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from analysis import figures as afig

    from experiments.paper import load_table, save_fig

    trajectory = load_table(run_dir, "trajectory")
    if "mean_drop" not in trajectory:
        return []
    methods = sorted(trajectory.method.unique())
    look = afig.styles(methods)
    palette = {m: look[m]["color"] for m in methods}
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.6), layout="constrained")
    sns.lineplot(data=trajectory.dropna(subset=["mean_drop"]), x="step", y="mean_drop", hue="method", hue_order=methods,
                 palette=palette, ax=axes[0], errorbar=None)
    axes[0].set_xlabel("training step")
    axes[0].set_ylabel("mean drop probability of the head" if settings.get("layers", "fc") == "fc"
                       else f"mean drop probability, {settings['layers']} (edge-weighted)")
    axes[0].set_title("Matched drop budget: every masked method follows DDC's mean (mean over seeds)")
    afig.place_legend(axes[0], loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2)
    if "meta_loss" in trajectory and trajectory.meta_loss.notna().any():
        meta = trajectory.dropna(subset=["meta_loss"])
        sns.lineplot(data=meta, x="step", y="meta_loss", hue="seed", ax=axes[1], palette="tab10")
        axes[1].set_xlabel("training step")
        axes[1].set_ylabel("look-ahead held-out loss (log scale)")
        axes[1].set_yscale("log")  # early steps, with BatchNorm's running statistics still off, reach 1e3
        axes[1].set_title("Mapping training (learned method), one line per seed")
        afig.place_legend(axes[1], title="seed", loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=5)
    if "val_acc" in trajectory and trajectory.val_acc.notna().any():
        curve = trajectory.dropna(subset=["val_acc"]).melt(id_vars=["method", "seed", "epoch"], value_vars=["running_train_acc", "val_acc"],
                                                            var_name="split", value_name="accuracy")
        curve["split"] = curve.split.map({"running_train_acc": "train (running, masks on)", "val_acc": "select half of validation"})
        sns.lineplot(data=curve, x="epoch", y="accuracy", hue="method", hue_order=methods, palette=palette, style="split",
                     ax=axes[2], errorbar=None)
        axes[2].set_title("Learning curves (mean over seeds)")
        afig.place_legend(axes[2], loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=2)
    return save_fig(fig, run_dir, "training")


def _mapping_figure(run_dir, settings: dict) -> List[str]:
    """The learned mapping p(z(|g|), z(|w|)) and its cuts against DDC's curve (per layer when there are several)."""
    import matplotlib.pyplot as plt
    from analysis import figures as afig

    from experiments.paper import load_table, save_fig

    grid = load_table(run_dir, "mapping_grid")
    if grid.empty:
        return []
    if "layer" in grid and grid.layer.nunique() > 1:
        return save_fig(_mapping_by_layer(grid, settings), run_dir, "mapping")
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8), layout="constrained")
    mean_grid = grid.groupby(["z_weight", "z_grad"], as_index=False).p_learned.mean()
    table = mean_grid.pivot(index="z_weight", columns="z_grad", values="p_learned").sort_index(ascending=False)
    image = axes[0].imshow(table.to_numpy(), aspect="auto", cmap="magma", vmin=0, vmax=1,
                           extent=[table.columns.min(), table.columns.max(), table.index.min(), table.index.max()])
    fig.colorbar(image, ax=axes[0], label="learned drop probability (mean over seeds)")
    axes[0].set_xlabel("z(|g|)  (EMA feature set equal)")
    axes[0].set_ylabel("z(|w|)")
    axes[0].set_title("Learned mapping p(z(|g|), z(|w|)), final shift")
    z = np.sort(grid.z_grad.unique())
    axes[1].plot(z, ddc_curve(z, settings["p_base"], settings["p_signal"], settings["tau"]), color="black", lw=2,
                 label="DDC: p_base + p_signal sigmoid(-z) [> tau]")
    for level in (-1.0, 0.0, 1.0):
        nearest = grid.z_weight.unique()[np.argmin(np.abs(grid.z_weight.unique() - level))]
        part = grid[grid.z_weight == nearest].groupby("z_grad", as_index=False).p_learned.mean()
        axes[1].plot(part.z_grad, part.p_learned, label=f"learned, z(|w|) = {nearest:.2f}")
    axes[1].set_xlabel("z(|g|)")
    axes[1].set_ylabel("drop probability")
    axes[1].set_ylim(0, 1)
    axes[1].set_title("Learned mapping vs DDC's fixed curve")
    afig.place_legend(axes[1])
    return save_fig(fig, run_dir, "mapping")


def _edges_figure(run_dir) -> List[str]:
    """Per-edge drop probability at the end of training: learned against DDC's formula on the same edges."""
    from analysis import figures as afig

    from experiments.paper import load_table, save_fig

    edges = load_table(run_dir, "edges")
    if edges.empty or "p_learned" not in edges:
        return []
    learned = edges[edges.method == "learned"]
    if learned.empty:
        return []
    if "layer" in learned and learned.layer.nunique() > 1:
        return save_fig(_edges_by_layer(learned), run_dir, "edges")
    ax = afig.new_axes(8.0, 4.5)
    ax.scatter(learned.z_grad, learned.p_learned, s=4, alpha=0.4, color=afig.METHOD_STYLES["learned"].color,
               label="learned (final edges, all seeds)")
    ax.scatter(learned.z_grad, learned.p_ddc, s=4, alpha=0.4, color=afig.METHOD_STYLES["ddc"].color,
               label="DDC formula on the same edges")
    ax.set_xlabel("z(|g|)")
    ax.set_ylabel("drop probability")
    ax.set_title("Per-edge drop probability at the end of training")
    afig.place_legend(ax, markerscale=3)
    return save_fig(ax, run_dir, "edges")


def _layer_order(table):
    """The mapped layers in model order (by their layer feature when stored, else as they appear)."""
    if "layer_index" in table:
        return list(table.drop_duplicates("layer").sort_values("layer_index").layer)
    return list(dict.fromkeys(table.layer))


def _mapping_by_layer(grid, settings):
    """The learned mapping of every mapped layer: one heatmap per layer and the curves at z(|w|) ~ 0."""
    import matplotlib.pyplot as plt
    from analysis import figures as afig

    layers = _layer_order(grid)
    columns = min(4, len(layers) + 1)
    rows = -(-(len(layers) + 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), squeeze=False, layout="constrained")
    axes = axes.ravel()
    image = None
    for ax, layer in zip(axes, layers):
        part = grid[grid.layer == layer].groupby(["z_weight", "z_grad"], as_index=False).p_learned.mean()
        table = part.pivot(index="z_weight", columns="z_grad", values="p_learned").sort_index(ascending=False)
        image = ax.imshow(table.to_numpy(), aspect="auto", cmap="magma", vmin=0, vmax=1,
                          extent=[table.columns.min(), table.columns.max(), table.index.min(), table.index.max()])
        ax.set_title(f"{layer} (feature {grid[grid.layer == layer].layer_index.iloc[0]:.2f})", fontsize=9)
        ax.set_xlabel("z(|g|)", fontsize=8)
        ax.set_ylabel("z(|w|)", fontsize=8)
    curves = axes[len(layers)]
    z = np.sort(grid.z_grad.unique())
    curves.plot(z, ddc_curve(z, settings["p_base"], settings["p_signal"], settings["tau"]), color="black", lw=2, label="DDC")
    levels = grid.z_weight.unique()
    nearest = levels[np.argmin(np.abs(levels))]
    colours = plt.get_cmap("viridis")(np.linspace(0, 1, len(layers)))
    for colour, layer in zip(colours, layers):
        part = grid[(grid.layer == layer) & (grid.z_weight == nearest)].groupby("z_grad", as_index=False).p_learned.mean()
        curves.plot(part.z_grad, part.p_learned, color=colour, label=layer)
    curves.set_xlabel("z(|g|)")
    curves.set_ylabel("drop probability")
    curves.set_ylim(0, 1)
    curves.set_title(f"Learned vs DDC, z(|w|) = {nearest:.2f}", fontsize=9)
    afig.place_legend(curves, fontsize="x-small")
    for ax in axes[len(layers) + 1 :]:
        ax.set_visible(False)
    fig.colorbar(image, ax=list(axes[: len(layers)]), label="learned drop probability (mean over seeds)", shrink=0.5, location="bottom",
                 aspect=40)
    fig.suptitle("Learned mapping p(z(|g|), z(|w|)) per layer (EMA feature set equal, final shift of each layer)")
    return fig


def _edges_by_layer(learned, per_layer: int = 2000):
    """Final per-edge probabilities, learned (colour: layer) against DDC's formula; a seeded sample per layer."""
    import matplotlib.pyplot as plt
    from analysis import figures as afig

    layers = _layer_order(learned)
    fig, ax = plt.subplots(figsize=(9, 4.8), layout="constrained")
    sample = _sample_edges(learned, per_layer)
    colours = plt.get_cmap("viridis")(np.linspace(0, 1, len(layers)))
    ax.scatter(sample.z_grad, sample.p_ddc, s=3, alpha=0.3, color="black", label="DDC formula on the same edges")
    for colour, layer in zip(colours, layers):
        part = sample[sample.layer == layer]
        ax.scatter(part.z_grad, part.p_learned, s=3, alpha=0.4, color=colour, label=f"learned, {layer}")
    ax.set_xlabel("z(|g|)")
    ax.set_ylabel("drop probability")
    ax.set_title(f"Per-edge drop probability at the end of training (at most {per_layer} edges per layer and seed)")
    afig.place_legend(ax, markerscale=3, fontsize="x-small")
    return fig


def _sample_edges(edges, per_layer: int):
    """At most ``per_layer`` edges of every (seed, layer), drawn with a fixed seed (for plotting only)."""
    return edges.sample(frac=1.0, random_state=0).groupby(["seed", "layer"], sort=False).head(per_layer)
