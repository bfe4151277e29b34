"""Watch a method while the network trains: per-layer quantities on a schedule.

A :class:`Recorder` is attached to a model (and optionally its optimizer). The
training loop calls ``recorder.step(step, epoch)`` after each optimizer step.
Methods hand it a typed record of what they used each step
(:class:`ddc.record.StepRecord` in ``method.last``); on scheduled steps each
quantity computes small scalars per layer on the device, and the recorder
moves them to the host in one transfer per flush (no host synchronisation on
the other steps). Snapshots of full tensors are taken on their own schedule.

The recorder never changes training: it draws no random numbers from the
global or the methods' generators, only reads tensors, and removes everything
it installed on ``detach`` (the methods' ``keep_last`` flags and the optimizer
hook). With no recorder attached nothing is installed at all.

Parts (Cockpit's split of *when* from *what*):

- :mod:`~ddc.recorder.quantities`: one small class per group of metrics,
  each with a schedule (*when*) and a ``compute`` (*what*);
- :mod:`~ddc.recorder.core`: the orchestrator, :class:`Recorder`, which owns
  the layers, the edge subsets (:mod:`~ddc.recorder.subsets`), the host
  transfer (:mod:`~ddc.recorder.transfer`) and the writer;
- :mod:`~ddc.recorder.schedules` and :mod:`~ddc.recorder.ordering` (the
  order statistics, on the host with numpy).

Recorded metrics (long format ``run_id, step, epoch, layer, metric, value``):

- :class:`SignalStats`, the gradient signal (DDC's ``dL/dW_eff``;
  ``weight.grad`` for other methods): ``grad_abs_mean``, ``grad_abs_std``,
  ``grad_abs_q{10,25,50,75,90}``, ``zscore_q*`` (quantiles of the layer z-score);
- :class:`DropProbStats`, the drop probability used this step:
  ``drop_prob_mean`` (the expected drop rate), ``drop_prob_std``,
  ``drop_prob_min``, ``drop_prob_max``, ``drop_prob_q*``, ``frac_q_positive``
  (DDC: share of edges with a signal term, ``p > p_base``) and
  ``rank_corr_grad_drop`` (Spearman correlation of the signal that produced
  the drop probability with it);
- :class:`MaskStats`: ``realized_drop_rate`` of the sampled mask,
  ``recal_keep_rate`` (the keep rate the re-calibration divided by, ``1 /
  scale`` averaged) and ``mask_jaccard`` (Jaccard overlap of the dropped sets
  of this and the previous recorded step);
- :class:`DropFrequency`: ``drop_freq_mean``/``drop_freq_std``/``drop_freq_max``
  (per-edge cumulative drop frequency since attach);
- :class:`WeightNorm` and :class:`UpdateNorm`: ``weight_norm`` and, with an
  optimizer, ``update_norm`` (Frobenius norm of this step's change of the weight);
- :class:`NonfiniteSteps`: DDC's count of steps with a non-finite signal.

Adding a metric is one class and one test. For example the norm of the bias,
every 10 steps::

    from ddc.recorder import Quantity

    class BiasNorm(Quantity):
        def compute(self, layer):  # layer: a LayerStep (name, layer, method, record, ...)
            bias = layer.layer.bias
            return {} if bias is None else {"bias_norm": bias.detach().norm()}

    recorder = Recorder(model).register(BiasNorm(every=10)).attach()

``compute`` returns ``{metric: value}``: a number, a 0-dim tensor (read at
the flush), or an :class:`OnHost` (arithmetic on device tensors finished on
the host, several metrics under a tuple key). Test it against a slow, obvious
recomputation, as ``tests/test_recorder.py`` does for the built-in ones.

Recording every step has to stay cheap, so for large layers the distribution
statistics come from a fixed random subset of edges, drawn once from the
recorder's own generator: means and standard deviations (of |g|, the drop
probability, drop frequencies) from ``max_edges`` edges (default 65,536), and
the statistics that need a sort (quantiles, rank correlation) from the first
``sort_edges`` of them (default 2,048). Layers up to those sizes are exact.
Counts and rates (realised drop rate, recalibration keep rate, mask overlap,
share of edges with a signal term, drop frequencies' mean and max) are exact
for layers of up to ``exact_edges`` edges (default 4,194,304); above that they
come from the same ``max_edges`` subset (standard error at most
``0.5 / sqrt(max_edges)``, 0.002 by default). ``exact_edges=None`` makes them
exact everywhere. Norms are always exact, and so are the per-edge drop counts
that snapshots carry (with no snapshot schedule, such a large layer keeps its
drop counts for the subset only). A large DDC layer's record holds the
statistics behind its drop probabilities rather than the probabilities, and
the recorder computes only its subset of them
(:meth:`ddc.record.StepRecord.drop_prob_at`). Snapshots have every layer's
drop probabilities.
"""

from .core import Recorder
from .ordering import average_ranks, drop_prob_order_statistics, signal_quantiles, sorted_quantiles, tied_ranks
from .quantities import (
    QUANTILES,
    DropFrequency,
    DropProbStats,
    LayerStep,
    MaskStats,
    NonfiniteSteps,
    Quantity,
    SignalStats,
    UpdateNorm,
    WeightNorm,
    default_quantities,
)
from .schedules import Schedule, as_schedule, every, logarithmic, never
from .transfer import OnHost

__all__ = [
    "QUANTILES",
    "DropFrequency",
    "DropProbStats",
    "LayerStep",
    "MaskStats",
    "NonfiniteSteps",
    "OnHost",
    "Quantity",
    "Recorder",
    "Schedule",
    "SignalStats",
    "UpdateNorm",
    "WeightNorm",
    "as_schedule",
    "average_ranks",
    "default_quantities",
    "drop_prob_order_statistics",
    "every",
    "logarithmic",
    "never",
    "signal_quantiles",
    "sorted_quantiles",
    "tied_ranks",
]
