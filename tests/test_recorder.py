"""Recorder quantities against slow, obvious recomputations; it never changes training."""

import math
import tracemalloc

import numpy as np
import pytest
import torch
from scipy import stats as sps
from torch import nn

import ddc
from ddc.recorder import DropFrequency, MaskStats, OnHost, Quantity, Recorder, every, logarithmic
from ddc.store import RecordWriter, load_records

from test_methods import batch, make_net


def run(method, steps=4, record=True, **options):
    model = make_net()
    handle = ddc.apply(model, method, layers=["fc1", "conv"] if method != "standout" else ["fc1"], seed=3, **options)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    # sort_edges above the layer sizes: every statistic is exact and can be recomputed
    recorder = Recorder(model, optimizer=opt, snapshot_every=1, snapshot_fn=lambda s, t: snaps.append((s, t)), sort_edges=1 << 14) if record else None
    snaps, losses = [], []
    if recorder:
        recorder.attach()
    for step in range(steps):
        x, y = batch(step)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if recorder:
            recorder.step(step, epoch=0)
    if recorder:
        recorder.detach()
    return model, handle, recorder, losses, snaps


@pytest.mark.parametrize("method", ["none", "dropout", "dropconnect", "standout", "ddc"])
def test_recorder_does_not_change_training(method):
    if method == "none":
        model = make_net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        recorder = Recorder(model, layers=["fc1"], optimizer=opt).attach()
        for step in range(3):
            x, y = batch(step)
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(), loss.backward(), opt.step()
            recorder.step(step)
        recorder.detach()
        assert set(recorder.to_frame().metric) >= {"grad_abs_mean", "weight_norm", "update_norm"}
        return
    *_, with_recorder, _ = run(method, record=True)
    *_, without, _ = run(method, record=False)
    assert with_recorder == without


def test_detach_removes_everything():
    model, handle, recorder, _, _ = run("ddc")
    assert all(not m.keep_last and m.last is None for m in handle.methods.values())
    assert recorder._handles == [] and not recorder.attached


def _quantity(recorder, kind):
    (quantity,) = [q for q in recorder.quantities if isinstance(q, kind)]
    return quantity


def _values(frame, step, layer):
    rows = frame[(frame.step == step) & (frame.layer == layer)]
    return dict(zip(rows.metric, rows.value))


def test_ddc_quantities_match_recomputation():
    model, handle, recorder, _, snaps = run("ddc", steps=4)
    frame = recorder.to_frame()
    _, tensors = snaps[3]
    _, previous = snaps[2]
    got = _values(frame, 3, "fc1")
    entry = tensors["fc1"]
    g = entry["signal"].abs().double().numpy().ravel()
    p = entry["drop_prob"].double().numpy().ravel()
    dropped = ~entry["keep"].numpy().ravel()
    prev_dropped = ~previous["fc1"]["keep"].numpy().ravel()
    assert got["grad_abs_mean"] == pytest.approx(g.mean())
    assert got["grad_abs_std"] == pytest.approx(g.std(ddof=1))
    assert got["grad_abs_q50"] == pytest.approx(np.quantile(g, 0.5))
    assert got["zscore_q90"] == pytest.approx((np.quantile(g, 0.9) - g.mean()) / (g.std(ddof=1) + 1e-9))
    assert got["drop_prob_mean"] == pytest.approx(p.mean())
    assert got["drop_prob_std"] == pytest.approx(p.std(ddof=1))
    assert got["drop_prob_min"] == pytest.approx(p.min()) and got["drop_prob_max"] == pytest.approx(p.max())
    assert got["drop_prob_q10"] == pytest.approx(np.quantile(p, 0.1))
    assert got["frac_q_positive"] == pytest.approx((entry["drop_prob"].numpy() > np.float32(0.3)).mean())
    assert got["realized_drop_rate"] == pytest.approx(dropped.mean())
    assert got["recal_keep_rate"] == pytest.approx(1 - dropped.mean(), abs=1e-6)
    jaccard = (dropped & prev_dropped).sum() / (dropped | prev_dropped).sum()
    assert got["mask_jaccard"] == pytest.approx(jaccard)
    freq = entry["drop_count"].double().numpy().ravel() / entry["steps_counted"]
    all_dropped = np.mean([~snaps[s][1]["fc1"]["keep"].numpy().ravel() for s in range(4) if "keep" in snaps[s][1]["fc1"]], axis=0)
    np.testing.assert_allclose(freq, all_dropped * sum("keep" in snaps[s][1]["fc1"] for s in range(4)) / entry["steps_counted"])
    assert got["drop_freq_mean"] == pytest.approx(freq.mean())
    assert got["weight_norm"] == pytest.approx(np.linalg.norm(entry["weight"].double().numpy()))
    update = entry["weight"] - previous["fc1"]["weight"]
    assert got["update_norm"] == pytest.approx(torch.linalg.vector_norm(update.double()).item(), rel=1e-5)


def test_rank_correlation_uses_the_signal_behind_the_drop_probability():
    model, handle, recorder, _, snaps = run("ddc", steps=3)
    frame = recorder.to_frame()
    # the drop probability of step 2 came from the signal stored after step 1's backward
    signal_used = snaps[1][1]["fc1"]["signal"].abs().numpy().ravel()
    drop_prob = snaps[2][1]["fc1"]["drop_prob"].numpy().ravel()
    rho = sps.spearmanr(signal_used, drop_prob).statistic
    got = _values(frame, 2, "fc1")["rank_corr_grad_drop"]
    assert got == pytest.approx(rho, rel=1e-9)
    assert got < -0.5


@pytest.mark.parametrize("method", ["dropout", "dropconnect", "standout"])
def test_baselines_record_comparable_fields(method):
    _, _, recorder, _, _ = run(method, steps=2)
    metrics = set(recorder.to_frame().query("layer == 'fc1'").metric)
    assert {"drop_prob_mean", "realized_drop_rate", "grad_abs_mean", "weight_norm"} <= metrics


def test_dropconnect_expected_rate_is_p():
    _, _, recorder, _, _ = run("dropconnect", steps=2, p=0.4)
    got = _values(recorder.to_frame(), 1, "fc1")
    assert got["drop_prob_mean"] == pytest.approx(0.4)
    assert abs(got["realized_drop_rate"] - 0.4) < 0.05


def test_schedules():
    assert [s for s in range(10) if every(3)(s)] == [0, 3, 6, 9]
    assert not any(every(0)(s) for s in range(5))
    assert [s for s in range(40) if logarithmic(2, dense_until=3)(s)] == [0, 1, 2, 3, 4, 8, 16, 32]
    with pytest.raises(ValueError, match="k="):
        every(-1)


def test_only_scheduled_steps_are_recorded():
    model = make_net()
    ddc.apply(model, "ddc", seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(model, every=2) as recorder:
        for step in range(5):
            x, y = batch(step)
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(), loss.backward(), opt.step()
            recorder.step(step)
    assert sorted(recorder.to_frame().step.unique()) == [0, 2, 4]


def test_attach_is_idempotent():
    model = make_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ddc.apply(model, "ddc")
    recorder = Recorder(model, optimizer=opt)
    recorder.attach().attach()
    assert len(recorder._handles) == 1
    recorder.detach()


def test_writer_bounded_memory_over_10000_steps(tmp_path):
    """10,000 steps recorded every step: rows go to parquet parts, memory stays flat."""
    layer = nn.Linear(8, 4)
    ddc.apply(layer, "ddc", layers=[nn.Linear], seed=0)
    opt = torch.optim.SGD(layer.parameters(), lr=0.01)
    writer = RecordWriter(tmp_path / "records", "r1", flush_rows=5_000)
    recorder = Recorder(layer, writer, optimizer=opt, flush_every=20).attach()
    x = torch.randn(16, 8)
    tracemalloc.start()
    peaks = []
    for step in range(10_000):
        loss = layer(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        recorder.step(step)
        if step in (2_000, 9_999):
            peaks.append(tracemalloc.get_traced_memory()[0])
    tracemalloc.stop()
    recorder.detach()
    assert len(recorder._pending) == 0 and len(writer.rows) == 0
    assert peaks[1] < peaks[0] + 2_000_000  # no growth with the number of steps
    parts = sorted((tmp_path / "records").glob("part-*.parquet"))
    assert len(parts) > 10
    import pandas as pd

    frame = pd.concat(pd.read_parquet(p) for p in parts)
    assert frame.step.nunique() == 10_000 and set(frame.columns) == {"run_id", "step", "epoch", "layer", "metric", "value"}


def test_large_layers_use_one_fixed_nested_subset():
    torch.manual_seed(0)
    layer = nn.Linear(300, 100)
    ddc.apply(layer, "ddc", layers=[nn.Linear], seed=0)
    recorder = Recorder(layer, max_edges=5000, sort_edges=1000).attach()
    x = torch.randn(8, 300)
    for step in range(3):
        layer(x).pow(2).mean().backward()
        recorder.step(step)
        layer.weight.grad = None
    recorder.detach()
    (perm,) = recorder.subsets.indices.values()
    assert len(perm) == 5000 and len(set(perm.tolist())) == 5000
    got = _values(recorder.to_frame(), 2, "")
    method = next(iter(ddc.regularized_layers(layer).values()))
    g = method.weight_signal.abs().flatten().double().numpy()
    idx = perm.numpy()
    assert got["grad_abs_mean"] == pytest.approx(g[idx].mean(), rel=1e-5)
    assert got["grad_abs_q50"] == pytest.approx(np.quantile(g[idx[:1000]], 0.5), rel=1e-5)
    assert got["realized_drop_rate"] == pytest.approx(_quantity(recorder, MaskStats).previous_keep[""].logical_not().float().mean().item())


def test_sorted_quantiles_and_average_ranks_match_torch_quantile_and_scipy():
    from scipy.stats import rankdata

    from ddc.recorder import average_ranks, sorted_quantiles, tied_ranks

    gen = torch.Generator().manual_seed(0)
    values = torch.cat([torch.rand(500, generator=gen), torch.full((300,), 0.3), torch.rand(7, generator=gen)]).numpy()
    levels = (0.0, 0.1, 0.25, 0.5, 0.9, 1.0)
    order = np.argsort(values)
    quantiles = sorted_quantiles(values[order], levels)
    np.testing.assert_allclose(quantiles, torch.quantile(torch.from_numpy(values), torch.tensor(levels)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(average_ranks(values[order], order), rankdata(values) - 1)
    np.testing.assert_allclose(tied_ranks(np.sort(values)), np.sort(rankdata(values) - 1))


@pytest.mark.parametrize("relation", ["decreasing", "increasing", "unrelated"])
def test_order_statistics_against_numpy_and_scipy(relation):
    """One sort orders both vectors when the drop probability is monotone in the used signal
    (DDC, ties at the clamp included); otherwise it gets its own sort. Same numbers either way."""
    from ddc.recorder import drop_prob_order_statistics, signal_quantiles

    rng = np.random.default_rng(0)
    used = np.abs(rng.standard_normal(2048)).astype(np.float32)
    z = (used - used.mean()) / used.std()
    p = {
        "decreasing": np.clip(0.3 + 0.2 * np.tanh(-z), 0.3, 0.5),
        "increasing": np.clip(0.3 + 0.2 * np.tanh(z), 0.3, 0.5),
        "unrelated": rng.uniform(0.2, 0.6, 2048).round(2),
    }[relation].astype(np.float32)
    magnitude = np.abs(rng.standard_normal(2048)).astype(np.float32)
    # the layer's mean 0.8 and standard deviation 0.6 (N-1) of |signal| over 101 edges
    levels = (0.1, 0.5, 0.9)
    magnitude_values = signal_quantiles(magnitude, 0.8, 0.36 * 100, count=101, quantiles=levels)
    drop_values = drop_prob_order_statistics(p, used, quantiles=levels)
    names = ["grad_abs_q10", "grad_abs_q50", "grad_abs_q90", "zscore_q10", "zscore_q50", "zscore_q90"]
    names += ["drop_prob_q10", "drop_prob_q50", "drop_prob_q90", "rank_corr_grad_drop"]
    got = dict(zip(names, magnitude_values + drop_values, strict=True))
    assert got["grad_abs_q50"] == pytest.approx(np.quantile(magnitude, 0.5), rel=1e-6)
    assert got["zscore_q90"] == pytest.approx((np.quantile(magnitude, 0.9) - 0.8) / (0.6 + 1e-9), rel=1e-6)
    for q in (0.1, 0.5, 0.9):
        assert got[f"drop_prob_q{round(q * 100):02d}"] == pytest.approx(np.quantile(p, q), rel=1e-6)
    assert got["rank_corr_grad_drop"] == pytest.approx(sps.spearmanr(used, p).statistic, abs=1e-12)
    if relation != "unrelated":
        assert (p == p.min()).sum() > 100  # the ties the shortcut has to average
    values = drop_prob_order_statistics(p, used[:10], quantiles=(0.5,))
    assert len(values) == 1  # no rank correlation between different edges


def test_deferred_values_equal_the_immediate_ones(monkeypatch):
    """On an accelerator values and sort samples wait on the device for the drain; forced on
    the CPU, that path must give the same rows as the immediate one."""
    _, _, immediate, _, _ = run("ddc", steps=3)
    monkeypatch.setattr(Recorder, "_values_wait_for_flush", staticmethod(lambda weight: True))
    _, _, deferred, _, _ = run("ddc", steps=3)
    a, b = immediate.to_frame(), deferred.to_frame()
    assert len(a) == len(b) and list(a.metric) == list(b.metric)
    np.testing.assert_allclose(a.value.to_numpy(), b.value.to_numpy(), rtol=1e-12)
    assert "rank_corr_grad_drop" in set(b.metric) and "zscore_q90" in set(b.metric)


@pytest.mark.parametrize("max_edges", [16, 1 << 16])
def test_per_edge_counts_stay_exact_across_the_byte_folds(max_edges):
    """Kept counts accumulate in bytes and fold into int32 every 255 steps (layers above
    max_edges), or go straight into int32: no step is lost either way."""
    torch.manual_seed(0)
    layer = nn.Linear(12, 5)
    handle = ddc.apply(layer, "ddc", layers=[nn.Linear], seed=1)
    method = next(iter(handle.methods.values()))
    recorder = Recorder(layer, every=0, max_edges=max_edges).attach()  # 60 edges > 16: byte counts
    expected = torch.zeros(5, 12, dtype=torch.int64)
    x = torch.randn(4, 12)
    steps = 0
    for step in range(600):
        layer(x).pow(2).mean().backward()
        if method.last.keep_mask is not None:  # DDC draws no mask before it has a gradient signal
            expected += method.last.keep_mask
            steps += 1
        recorder.step(step)
        layer.weight.grad = None
        if step == 300:  # a checkpoint taken mid-way restores the same counts
            state = recorder.state_dict()
            resumed = Recorder(layer, every=0, max_edges=max_edges)
            resumed.load_state_dict(state)
            assert torch.equal(_quantity(resumed, DropFrequency).counts[""].totals(), expected.int())
    entry = recorder.snapshot()[""]
    recorder.detach()
    assert entry["steps_counted"] == steps >= 599
    assert torch.equal(entry["drop_count"], (steps - expected).int())


def _large_layer(**recorder_options):
    """A 30,000-edge Linear with DDC, a recorder with smaller subsets (5,000 / 1,000 edges) and an input."""
    torch.manual_seed(0)
    layer = nn.Linear(300, 100)
    handle = ddc.apply(layer, "ddc", layers=[nn.Linear], seed=0)
    method = next(iter(handle.methods.values()))
    recorder = Recorder(layer, max_edges=5000, sort_edges=1000, **recorder_options).attach()
    return layer, method, recorder, torch.randn(8, 300)


def test_counts_of_layers_above_exact_edges_come_from_the_subset():
    def record(**options):
        layer, method, recorder, x = _large_layer(**options)
        keeps = []
        for step in range(4):
            layer(x).pow(2).mean().backward()
            if method.last.keep_mask is not None:  # none before the first gradient signal
                keeps.append(method.last.keep_mask.clone())
            recorder.step(step)
            layer.weight.grad = None
        recorder.detach()
        return recorder, keeps

    sampled, keeps = record(exact_edges=10_000)
    exact, same_keeps = record(exact_edges=None)
    assert all(torch.equal(a, b) for a, b in zip(keeps, same_keeps))
    (perm,) = sampled.subsets.indices.values()
    idx = perm.numpy()
    dropped = [~k.flatten().numpy() for k in keeps]
    assert len(dropped) == 3
    got, want = _values(sampled.to_frame(), 3, ""), _values(exact.to_frame(), 3, "")
    assert got["realized_drop_rate"] == pytest.approx(dropped[2][idx].mean())
    assert want["realized_drop_rate"] == pytest.approx(dropped[2].mean())
    jaccard = (dropped[2][idx] & dropped[1][idx]).sum() / (dropped[2][idx] | dropped[1][idx]).sum()
    assert got["mask_jaccard"] == pytest.approx(jaccard)
    assert got["drop_freq_mean"] == pytest.approx(np.mean(dropped, axis=0)[idx].mean())
    assert want["drop_freq_mean"] == pytest.approx(np.mean(dropped, axis=0).mean())
    assert got["weight_norm"] == want["weight_norm"]  # norms stay exact


@pytest.mark.parametrize("field", ["max_edges", "sort_edges", "exact_edges", "flush_every"])
def test_recorder_sizes_are_validated(field):
    model = make_net()
    ddc.apply(model, "ddc", layers=["fc1"])
    with pytest.raises(ValueError, match=field):
        Recorder(model, **{field: 0})


def test_large_layers_hand_the_recorder_lazy_drop_probabilities(monkeypatch):
    """From LAZY_DROP_PROB_NUMEL edges the method keeps no full drop-probability tensor: the
    record holds the statistics behind them, and the recorder computes its subset from the
    signal; subset values, snapshots and masks equal those of materialised ones."""
    from ddc import methods as M

    def record(threshold):
        monkeypatch.setattr(M, "LAZY_DROP_PROB_NUMEL", threshold)
        snaps = []
        layer, method, recorder, x = _large_layer(exact_edges=10_000, snapshot_every=lambda s: s == 3, snapshot_fn=lambda s, t: snaps.append(t))
        kinds, keeps = [], []
        for step in range(4):
            layer(x).pow(2).mean().backward()
            kinds.append(type(method.last.drop_prob).__name__)
            keeps.append(method.last.keep_mask)
            recorder.step(step)
            layer.weight.grad = None
        recorder.detach()
        return recorder.to_frame(), snaps[0][""], kinds, keeps

    lazy, lazy_snap, lazy_kinds, lazy_keeps = record(1)
    full, full_snap, full_kinds, full_keeps = record(1 << 40)
    assert lazy_kinds[1:] == ["NoneType"] * 3 and full_kinds[1:] == ["Tensor"] * 3
    assert all(a is None and b is None or torch.equal(a, b) for a, b in zip(lazy_keeps, full_keeps))
    torch.testing.assert_close(lazy_snap["drop_prob"], full_snap["drop_prob"], rtol=0, atol=1e-7)
    merged = lazy.merge(full, on=["step", "layer", "metric"], suffixes=("_lazy", "_full"))
    assert len(merged) == len(full) and len(full) > 50
    np.testing.assert_allclose(merged.value_lazy, merged.value_full, rtol=1e-6, atol=1e-7)


def test_without_snapshots_a_large_layer_is_counted_on_its_subset_only():
    layer, method, recorder, x = _large_layer(exact_edges=10_000)
    expected = torch.zeros(300 * 100, dtype=torch.int64)
    for step in range(5):
        layer(x).pow(2).mean().backward()
        if method.last.keep_mask is not None:
            expected += method.last.keep_mask.flatten()
        recorder.step(step)
        layer.weight.grad = None
    (perm,) = recorder.subsets.indices.values()
    counts = _quantity(recorder, DropFrequency).counts[""].totals()
    assert counts.shape == (5000,)
    assert torch.equal(counts.long(), expected[perm])
    assert "drop_count" not in recorder.snapshot()[""]  # no weight-shaped counts to show
    assert method.last.keep_mask is None  # the full mask is let go once its subset is counted
    recorder.detach()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_recorder_rows_on_each_device(device):
    """On an accelerator values and sort samples wait on the device; the drain turns them into rows."""
    model = make_net().to(device)
    ddc.apply(model, "ddc", layers=["fc1"], seed=0)
    recorder = Recorder(model, flush_every=2).attach()
    for step in range(4):
        x, y = batch(step)
        nn.functional.cross_entropy(model(x.to(device)), y.to(device)).backward()
        recorder.step(step)
        model.zero_grad(set_to_none=True)
    recorder.detach()
    frame = recorder.to_frame()
    assert {"rank_corr_grad_drop", "zscore_q90", "drop_prob_q50", "mask_jaccard", "weight_norm"} <= set(frame.metric)
    assert np.isfinite(frame.value).all() and sorted(frame.step.unique()) == [0, 1, 2, 3]


def test_a_custom_quantity_is_one_class_with_its_own_schedule():
    """Adding a metric: subclass Quantity, register it; it follows its own schedule, its
    values reach the rows (on the CPU and through the deferred device path alike), and the
    built-in metrics are unchanged."""

    class BiasStats(Quantity):
        def compute(self, layer):
            bias = layer.layer.bias.detach()
            return {"bias_norm": bias.norm(), ("bias_min", "bias_max"): OnHost(lambda values: (values.min(), values.max()), bias)}

    def record(custom, deferred=False):
        torch.manual_seed(0)
        layer = nn.Linear(6, 4)
        ddc.apply(layer, "ddc", layers=[nn.Linear], seed=0)
        opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        recorder = Recorder(layer, optimizer=opt)
        if custom:
            recorder.register(BiasStats(every=2))
        if deferred:
            recorder._values_wait_for_flush = lambda weight: True
        recorder.attach()
        biases = []
        for step in range(5):
            layer(torch.randn(3, 6)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            biases.append(layer.bias.detach().clone().double())
            recorder.step(step)
        recorder.detach()
        return recorder.to_frame(), biases

    plain, _ = record(False)
    frame, biases = record(True)
    deferred, _ = record(True, deferred=True)
    custom = frame[frame.metric.str.startswith("bias_")]
    assert sorted(custom.step.unique()) == [0, 2, 4]
    for step in (0, 2, 4):
        got = _values(frame, step, "")
        assert got["bias_norm"] == pytest.approx(torch.linalg.vector_norm(biases[step]).item(), rel=1e-6)
        assert (got["bias_min"], got["bias_max"]) == pytest.approx((biases[step].min().item(), biases[step].max().item()), rel=1e-6)
    builtin = frame[~frame.metric.str.startswith("bias_")].reset_index(drop=True)
    assert builtin.equals(plain)
    np.testing.assert_allclose(deferred.value.to_numpy(), frame.value.to_numpy(), rtol=1e-12)
    with pytest.raises(TypeError, match="Quantity"):
        Recorder(layer_with_ddc()).register(object())


def layer_with_ddc():
    layer = nn.Linear(3, 2)
    ddc.apply(layer, "ddc", layers=[nn.Linear], seed=0)
    return layer
