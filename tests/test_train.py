"""Trainer: validation, schedule, pairing, reproducibility, selection on validation, resume, CLI."""

import json
import os
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from ddc import recipes, store, train
from ddc.cli import main
from ddc.train import TrainConfig

FASHION = Path("/usr/share/datasets/fashion-mnist")


def tiny(**overrides):
    fields = dict(
        dataset="mnist1d",
        model="mlp",
        method="ddc",
        epochs=3,
        lr=0.05,
        train_subset=300,
        val_subset=200,
        test_subset=200,
        warmup_epochs=1,
        progress=False,
        record_every=2,
    )
    fields.update(overrides)
    return TrainConfig.from_dict(fields)


def test_unknown_field_and_bad_values_are_named():
    with pytest.raises(ValueError, match="unknown config field.*'epoch'.*allowed fields: dataset"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="dataset='fmnist'.*'fashion_mnist'"):
        TrainConfig.from_dict({"dataset": "fmnist"})
    with pytest.raises(ValueError, match="epochs=0"):
        TrainConfig.from_dict({"epochs": 0})
    with pytest.raises(ValueError, match="p_base"):
        TrainConfig.from_dict({"method": "ddc", "method_options": {"p_base": 2}})
    with pytest.raises(ValueError, match="schedule='step'"):
        TrainConfig.from_dict({"schedule": "step"})


def test_warmup_cosine_schedule():
    config = TrainConfig(epochs=10, lr=0.1, min_lr=0.001, warmup_epochs=2)
    lrs = [train.learning_rate(config, e) for e in range(10)]
    assert lrs[0] == pytest.approx(0.1 / 3) and lrs[1] == pytest.approx(0.2 / 3)
    assert lrs[2] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.001)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    # the authors' MNIST recipe: lr equals the minimum, so the schedule is constant
    mnist = TrainConfig(**{k: v for k, v in recipes.recipe("mnist-simplecnn1", "full").items()})
    assert {train.learning_rate(mnist, e) for e in range(75)} == {0.001}


def test_run_id_is_stable_and_ignores_operational_fields():
    a, b = tiny(), tiny(progress=True, tag="x", data_root="/elsewhere")
    assert a.run_id() == b.run_id()
    assert a.run_id() != tiny(seed=1).run_id() != tiny(method_options={"p_base": 0.2}).run_id()


def test_run_ids_published_before_the_class_filter_are_unchanged():
    # ids computed by the trainer before ``classes`` existed (commit df3e44f)
    assert TrainConfig.from_dict({}).run_id() == "fashion_mnist-simplecnn1-none-s0-ad286c1ac8"
    assert tiny(progress=False).run_id() == "mnist1d-mlp-ddc-s0-ff4c710344"
    dropout = TrainConfig.from_dict({"method": "dropout", "method_options": {"p": 0.5}, "seed": 2})
    assert dropout.run_id() == "fashion_mnist-simplecnn1-dropout-s2-bdf5e9045b"
    # naming every class is the same data and labels as no filter: the same id
    assert tiny(classes=list(range(10))).run_id() == tiny().run_id()
    assert tiny(classes=list(range(10))).classes is None


def test_class_filter_is_canonical_and_part_of_the_id():
    a, b = tiny(classes=[7, 0, 3]), tiny(classes=[0, 3, 7])
    assert a.classes == [0, 3, 7] and a.run_id() == b.run_id()
    assert a.run_id() != tiny().run_id() != tiny(classes=[0, 3]).run_id()
    assert TrainConfig.from_dict(a.to_dict()).run_id() == a.run_id()  # survives config.json


@pytest.mark.parametrize(
    "classes, message",
    [([4], "fewer than 2"), ([2, 2], "repeats"), ([0, 10], r"\[0, 9\]"), ("0,1", "classes='0,1'"), ([0.0, 1], r"\[0, 9\]")],
)
def test_bad_class_filter_is_named(classes, message):
    with pytest.raises(ValueError, match=message):
        tiny(classes=classes)
    with pytest.raises(ValueError, match="classes=.*regression"):
        TrainConfig.from_dict({"dataset": "synthetic", "model": "linreg2d", "classes": [0, 1]})


def test_class_filter_run_trains_a_k_class_model(tmp_path):
    with pytest.raises(ValueError, match=r"val_subset must be an integer in \[1, \d+\].*classes \[2, 5, 8\]"):
        train.build(tiny(classes=[2, 5, 8]))  # val_subset=200 > the val examples of three classes
    config = tiny(classes=[2, 5, 8], epochs=1, record_every=0, val_subset=100, test_subset=100)
    splits, model, handle = train.build(config)
    handle.remove()
    assert splits.num_classes == 3 and model(splits.test.tensors[0][:2]).shape == (2, 3)
    assert set(splits.train.tensors[1].tolist()) == {0, 1, 2} and set(splits.heldout.tensors[1].tolist()).isdisjoint({2, 5, 8})
    path = train.run(config, tmp_path)
    stored = json.loads((path / "config.json").read_text())
    assert stored["classes"] == [2, 5, 8] and stored["data_info"]["classes"] == [2, 5, 8]
    assert stored["run_id"] == config.run_id() == path.name
    summary = json.loads((path / "summary.json").read_text())
    assert summary["n_test"] == len(splits.test) == 100 and summary["n_val"] == 100
    runs = store.load_runs(tmp_path)
    assert runs.classes.tolist() == ["[2, 5, 8]"]


def test_cli_class_filter(tmp_path):
    result = CliRunner().invoke(main, ["train", "--dataset", "mnist1d", "--model", "mlp", "--classes", "3,1", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert '"classes": [\n    1,\n    3\n  ]' in result.output or "[1, 3]" in result.output
    result = CliRunner().invoke(main, ["train", "--dataset", "mnist1d", "--classes", "1,x", "--dry-run"])
    assert result.exit_code == 2 and "--classes" in result.output


def test_methods_start_from_identical_weights_and_data():
    states = []
    for method in ("none", "dropout", "dropconnect", "standout", "ddc"):
        splits, model, handle = train.build(tiny(method=method))
        states.append(model.state_dict())
        handle.remove()
    for other in states[1:]:
        assert all(torch.equal(states[0][k], other[k]) for k in states[0])


def test_same_seed_same_numbers(tmp_path):
    first = train.run(tiny(), tmp_path / "a")
    second = train.run(tiny(), tmp_path / "b")
    pd.testing.assert_frame_equal(pd.read_parquet(first / "metrics.parquet"), pd.read_parquet(second / "metrics.parquet"))
    pd.testing.assert_frame_equal(store.load_records(first), store.load_records(second))


def test_selection_is_on_validation(tmp_path):
    path = train.run(tiny(epochs=4), tmp_path)
    metrics = pd.read_parquet(path / "metrics.parquet")
    summary = json.loads((path / "summary.json").read_text())
    val = metrics.query("split == 'val' and metric == 'acc'").set_index("epoch").value
    test = metrics.query("split == 'test' and metric == 'acc'").set_index("epoch").value
    best = int(val.idxmax())  # idxmax keeps the first of ties, as the trainer
    assert summary["best_epoch"] == best
    assert summary["test_acc"] == test[best] and summary["final_test_acc"] == test[3]


def test_finished_run_is_not_retrained(tmp_path):
    path = train.run(tiny(epochs=1), tmp_path)
    stamp = os.stat(path / "summary.json").st_mtime_ns
    assert train.run(tiny(epochs=1), tmp_path) == path
    assert os.stat(path / "summary.json").st_mtime_ns == stamp



def _made_under_torch(path, version):
    """Rewrite a finished run's recorded environment as if another torch version had made it."""
    config = json.loads((path / "config.json").read_text())
    config["environment"]["torch"] = version
    (path / "config.json").write_text(json.dumps(config))


def test_finished_run_made_under_another_torch_is_reused_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "_WARNED_REUSED", set())
    config = tiny(epochs=1, record_every=0)
    path = train.run(config, tmp_path)
    summary = (path / "summary.json").read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same environment: no warning
        assert train.run(config, tmp_path) == path
    _made_under_torch(path, "0.0.1")
    with pytest.warns(train.ReusedRunWarning) as caught:
        assert train.run(config, tmp_path) == path
    assert len(caught) == 1
    message = str(caught[0].message)
    assert config.run_id() in message and "torch '0.0.1'" in message and f"(here {torch.__version__!r})" in message
    assert "thread count and the device, not the torch version" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per run in a process
        assert train.run(config, tmp_path) == path
    assert (path / "summary.json").read_bytes() == summary  # reused as it is


def test_interrupted_run_resumes_to_identical_result(tmp_path, monkeypatch):
    reference = train.run(tiny(epochs=3), tmp_path / "ref")
    calls = {"n": 0}
    original = train.evaluate

    def crash_in_third_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # val of epoch 2 (two evaluations per epoch)
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate", crash_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train.run(tiny(epochs=3), tmp_path / "resumed")
    assert store.run_dirs(tmp_path / "resumed") == []  # nothing half-published
    assert (tmp_path / "resumed" / ".partial" / tiny().run_id() / "checkpoint.pt").exists()
    monkeypatch.setattr(train, "evaluate", original)
    resumed = train.run(tiny(epochs=3), tmp_path / "resumed")
    pd.testing.assert_frame_equal(pd.read_parquet(reference / "metrics.parquet"), pd.read_parquet(resumed / "metrics.parquet"))
    pd.testing.assert_frame_equal(store.load_records(reference), store.load_records(resumed))
    assert not (tmp_path / "resumed" / ".partial" / tiny().run_id()).exists()


def test_recording_off_installs_nothing(tmp_path, monkeypatch):
    import ddc.recorder

    def refuse(*args, **kwargs):
        raise AssertionError("a Recorder was created with recording off")

    monkeypatch.setattr(ddc.recorder, "Recorder", refuse)
    path = train.run(tiny(record_every=0, epochs=1), tmp_path)
    assert not (path / "records").exists() and not (path / "snapshots").exists()


def test_regression_run(tmp_path):
    config = TrainConfig.from_dict({**recipes.recipe("synthetic-linreg2d", "smoke"), "method": "ddc", "progress": False})
    summary = json.loads((train.run(config, tmp_path) / "summary.json").read_text())
    assert "best_val_loss" in summary and summary["test_loss"] < 5.0


@pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_simplecnn1_ddc_learns(tmp_path):
    config = TrainConfig.from_dict(
        dict(
            dataset="fashion_mnist",
            model="simplecnn1",
            method="ddc",
            epochs=6,
            lr=0.02,
            warmup_epochs=1,
            train_subset=2000,
            val_subset=500,
            test_subset=1000,
            record_every=5,
            snapshot_every=20,
            progress=False,
        )
    )
    path = train.run(config, tmp_path)
    summary = json.loads((path / "summary.json").read_text())
    assert summary["test_acc"] > 0.5  # chance is 0.1
    assert {p.name for p in path.iterdir()} == {"config.json", "metrics.parquet", "records", "snapshots", "summary.json", "model.pt"}
    records = store.load_records(path)
    assert {"drop_prob_mean", "realized_drop_rate", "mask_jaccard"} <= set(records.metric)
    snapshot = torch.load(next((path / "snapshots").glob("*.pt")))
    assert set(snapshot["linear1"]) >= {"weight", "signal", "drop_prob", "keep"}


# ----------------------------------------------------------------------------- CLI


def test_cli_help_everywhere():
    runner = CliRunner()
    for args in (["--help"], ["train", "--help"], ["data", "--help"], ["data", "list", "--help"], ["runs", "ls", "--help"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
    assert "--p-base" not in runner.invoke(main, ["train", "--help"]).output  # method options go through --opt
    assert "--weight-decay" in runner.invoke(main, ["train", "--help"]).output


def test_cli_typos_are_explained():
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--epocs", "3"])
    assert result.exit_code == 2 and "Did you mean" in result.output and "--epochs" in result.output
    result = runner.invoke(main, ["train", "--method", "ddc", "--opt", "p_bsae=0.2", "--dry-run"])
    assert result.exit_code == 2 and "p_bsae" in result.output and "p_base" in result.output
    result = runner.invoke(main, ["train", "--recipe", "mnist-cnn"])
    assert result.exit_code == 2 and "mnist-simplecnn1" in result.output and "Traceback" not in result.output


def test_cli_train_and_list_runs(tmp_path):
    runner = CliRunner()
    config = tmp_path / "c.yaml"
    config.write_text("dataset: mnist1d\nmodel: mlp\nepochs: 1\ntrain_subset: 200\nval_subset: 100\ntest_subset: 100\n")
    result = runner.invoke(
        main,
        ["train", "--config", str(config), "--method", "ddc", "--opt", "p_base=0.2", "--no-progress", "--root", str(tmp_path / "runs")],
    )
    assert result.exit_code == 0, result.output
    runs = store.load_runs(tmp_path / "runs")
    assert runs.p_base.tolist() == [0.2] and runs.epochs.tolist() == [1]
    listing = runner.invoke(main, ["runs", "ls", str(tmp_path / "runs")])
    assert "mnist1d-mlp-ddc" in listing.output
    shown = runner.invoke(main, ["runs", "show", str(store.run_dirs(tmp_path / "runs")[0])])
    assert shown.exit_code == 0 and "summary" in shown.output


# ----------------------------------------------------------------------------- sources of randomness


def test_source_seeds_default_to_seed_and_keep_run_ids():
    base = tiny(seed=3)
    assert {s: base.source_seed(s) for s in ("data", "init", "order", "mask")} == dict.fromkeys(("data", "init", "order", "mask"), 3)
    for name in train.SEED_SOURCES:
        assert tiny(seed=3, **{name: 3}).run_id() == base.run_id()  # equal to seed: the same run
        assert tiny(seed=3, **{name: 4}).run_id() != base.run_id()
        with pytest.raises(ValueError, match=f"{name}=-1"):
            tiny(**{name: -1})
    ids = {tiny(seed=3, **{name: 4}).run_id() for name in train.SEED_SOURCES}
    assert len(ids) == 4  # each source is its own run
    with pytest.raises(ValueError, match="source='weights'"):
        base.source_seed("weights")


def test_each_source_seed_drives_only_its_source():
    def parts(**seeds):
        config = tiny(method="dropconnect", **seeds)
        splits, model, handle = train.build(config)
        handle.remove()
        order = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(config.source_seed("order")))
        return splits.train.tensors[0], model.state_dict(), order

    x0, w0, o0 = parts()
    x1, w1, o1 = parts(init_seed=5)
    assert torch.equal(x0, x1) and torch.equal(o0, o1) and not torch.equal(w0["linear1.weight"], w1["linear1.weight"])
    x2, w2, o2 = parts(data_seed=5)
    assert not torch.equal(x0, x2) and all(torch.equal(w0[k], w2[k]) for k in w0) and torch.equal(o0, o2)
    x3, w3, o3 = parts(order_seed=5)
    assert torch.equal(x0, x3) and all(torch.equal(w0[k], w3[k]) for k in w0) and not torch.equal(o0, o3)


def test_mask_and_order_seeds_reach_the_training_loop(tmp_path):
    def first_epoch(method="dropconnect", **seeds):
        path = train.run(tiny(method=method, epochs=1, record_every=0, **seeds), tmp_path)
        return pd.read_parquet(path / "metrics.parquet").query("split == 'train' and metric == 'loss'").value.item()

    assert first_epoch() != first_epoch(mask_seed=9)
    assert first_epoch(mask_seed=0) == first_epoch()  # mask_seed equal to seed: the same stored run
    assert first_epoch("none") != first_epoch("none", order_seed=9)  # no masks: only the order differs
    assert first_epoch("none") == first_epoch("none", mask_seed=9)


# ----------------------------------------------------------------------------- numbers are numbers


def test_numbers_in_exponent_form_are_numbers(tmp_path):
    runner = CliRunner()
    config = tmp_path / "c.yaml"
    config.write_text("dataset: mnist1d\nmodel: mlp\nlr: 1e-2\nweight_decay: 5e-4\nmin_lr: .5e-3\n")
    result = runner.invoke(main, ["train", "--config", str(config), "--method", "ddc", "--opt", "p_base=3e-1",
                                  "--opt", "p_signal=.5", "--opt", "tau=5E-1", "--dry-run"])
    assert result.exit_code == 0, result.output
    resolved = json.loads(result.output.split("\n", 1)[1])
    assert resolved["lr"] == 0.01 and resolved["weight_decay"] == 5e-4 and resolved["min_lr"] == 5e-4
    assert resolved["method_options"]["p_base"] == 0.3 and resolved["method_options"]["p_signal"] == 0.5
    assert resolved["method_options"]["tau"] == 0.5


# ----------------------------------------------------------------------------- one writer per run


def test_second_writer_waits_and_never_writes(tmp_path):
    import threading
    import time

    config = tiny(epochs=1, record_every=0)
    run_id = config.run_id()
    done, messages = [], []
    with store.run_lock(tmp_path, run_id):
        with pytest.raises(store.RunBusy, match=f"run {run_id} is being written by pid {os.getpid()}"):
            train.run(config, tmp_path, wait=False)
        assert not (tmp_path / ".partial").exists()
        waiter = threading.Thread(target=lambda: done.append(train.run(config, tmp_path, log=messages.append)))
        waiter.start()
        deadline = time.monotonic() + 60
        while not messages and time.monotonic() < deadline:
            time.sleep(0.05)
        assert messages and f"run {run_id} is being written by pid {os.getpid()}" in messages[0] and "waiting" in messages[0]
        # meanwhile the first writer publishes the run
        published = train.run(config, tmp_path / "elsewhere")
        os.rename(published, tmp_path / run_id)
        assert not (tmp_path / ".partial").exists()
    waiter.join(60)
    assert done == [tmp_path / run_id]
    assert not (tmp_path / ".partial").exists()  # the second writer found it finished and wrote nothing


def test_nothing_at_a_runs_path_is_deleted(tmp_path):
    config = tiny(epochs=1, record_every=0)
    mine = tmp_path / config.run_id()
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(store.RunPathOccupied, match=str(mine)):
        train.run(config, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [config.run_id()] and (mine / "notes.txt").read_text() == "mine"


def test_setup_errors_come_before_anything_is_written(tmp_path):
    for config, named in ((tiny(layers=["nosuchlayer"]), "nosuchlayer"), (tiny(device="cuda:7"), "device='cuda:7'"),
                          (tiny(train_subset=10**6), "train_subset")):
        with pytest.raises(train.RunSetupError, match=named):
            train.run(config, tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_resumed_run_says_so_and_refuses_other_settings(tmp_path, monkeypatch):
    config = tiny(epochs=3)
    original = train.evaluate
    calls = {"n": 0}

    def crash_in_third_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # validation of epoch 2
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate", crash_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train.run(config, tmp_path)
    monkeypatch.setattr(train, "evaluate", original)
    real_environment = train.environment
    monkeypatch.setattr(train, "environment", lambda c: {**real_environment(c), "torch": "9.9.9"})
    with pytest.raises(train.RunSetupError, match=r"stopped at epoch 2 of 3 .*torch '.*' -> '9.9.9'"):
        train.run(config, tmp_path)
    monkeypatch.setattr(train, "environment", real_environment)
    messages = []
    path = train.run(config, tmp_path, log=messages.append)
    assert messages == [f"resuming run {config.run_id()} from its checkpoint at epoch 2 of 3"]
    summary = json.loads((path / "summary.json").read_text())
    assert summary["resumed_at_epochs"] == [2]
    stored = json.loads((path / "config.json").read_text())
    assert stored["environment"] == {"torch": torch.__version__, "num_threads": 1, "device": "cpu"}


def test_every_run_trains_with_one_thread_count_whoever_starts_it(tmp_path, monkeypatch):
    seen = []
    original = train._train
    monkeypatch.setattr(train, "_train", lambda *a: seen.append(torch.get_num_threads()) or original(*a))
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train.run(tiny(epochs=1, record_every=0), tmp_path)
        train.run(tiny(epochs=1, record_every=0, num_threads=2), tmp_path)
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(previous)
    assert seen == [train.DEFAULT_THREADS, 2]
    # the thread count is part of the identity; the default spelled out is the same run
    assert tiny(num_threads=2).run_id() != tiny().run_id() == tiny(num_threads=train.DEFAULT_THREADS).run_id()


# ----------------------------------------------------------------------------- the loop


def _regression_problem(count=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(count, 3, generator=generator)
    return inputs, inputs @ torch.tensor([[1.0], [-2.0], [0.5]])


def _fit_linear(epochs=None, state=None, model=None, order=None, **options):
    torch.manual_seed(0)
    model = model or torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    order = order or torch.Generator().manual_seed(1)
    inputs, targets = _regression_problem()
    state = train.fit(model, optimizer, inputs, targets, loss_fn=torch.nn.functional.mse_loss, batch_size=16,
                      order_generator=order, epochs=epochs, task="regression", state=state, **options)
    return model, state


class _Trace(train.Callback):
    def __init__(self):
        self.events = []

    def on_epoch_start(self, state):
        self.events.append(("start", state.epoch, state.step))

    def on_step(self, state, step):
        assert step.index == state.step and step.inputs.shape[0] == step.targets.shape[0] == len(step.outputs)
        self.events.append(("step", step.epoch, step.index, len(step.inputs), step.lr))

    def on_epoch_end(self, state):
        self.events.append(("end", state.epoch, state.step))


def test_fit_calls_back_in_order_with_the_epochs_batches():
    trace = _Trace()
    _, state = _fit_linear(epochs=2, callbacks=[trace], learning_rate=lambda epoch: 0.1 / (epoch + 1))
    # 40 examples in batches of 16: 16, 16, 8 per epoch
    assert trace.events == [
        ("start", 0, 0), ("step", 0, 0, 16, 0.1), ("step", 0, 1, 16, 0.1), ("step", 0, 2, 8, 0.1), ("end", 1, 3),
        ("start", 1, 3), ("step", 1, 3, 16, 0.05), ("step", 1, 4, 16, 0.05), ("step", 1, 5, 8, 0.05), ("end", 2, 6),
    ]
    assert (state.epoch, state.step, state.lr) == (2, 6, 0.05) and set(state.train_metrics) == {"loss"}


def test_fit_drop_last_and_max_steps():
    trace = _Trace()
    _, state = _fit_linear(max_steps=5, drop_last=True, callbacks=[trace])
    sizes = [event[3] for event in trace.events if event[0] == "step"]
    assert sizes == [16] * 5 and state.step == 5 and state.epoch == 3  # two full batches an epoch, the third cut short
    with pytest.raises(ValueError, match="epochs or max_steps"):
        _fit_linear()


def test_fit_continued_from_its_state_is_one_fit():
    whole, whole_state = _fit_linear(epochs=4)
    torch.manual_seed(0)
    model, order = torch.nn.Linear(3, 1), torch.Generator().manual_seed(1)
    _, state = _fit_linear(epochs=2, model=model, order=order)
    # a fresh optimizer is the same here: plain SGD keeps no state
    _, state = _fit_linear(epochs=4, model=model, order=order, state=state)
    assert torch.equal(model.weight, whole.weight) and torch.equal(model.bias, whole.bias)
    assert (state.epoch, state.step) == (whole_state.epoch, whole_state.step) == (4, 12)


def test_selection_keeps_the_best_validation_epoch_and_its_weights():
    scores = iter([0.5, 0.7, 0.7, 0.6])  # the tie at epoch 2 keeps epoch 1
    seen = {}

    def validate(model):
        seen[len(seen)] = model.weight.detach().clone()
        return {"acc": next(scores)}

    model = torch.nn.Linear(3, 1)
    selection = train.Selection(model, validate)
    _, state = _fit_linear(epochs=4, model=model, callbacks=[selection])
    assert state.best.epoch == 1 and state.best.score == 0.7 and state.val_metrics == {"acc": 0.6}
    assert torch.equal(state.best.weights["weight"], seen[1]) and set(state.best.metrics) == {"train", "val"}
    losses = iter([3.0, 1.0, 2.0])
    every = train.Selection(model, lambda _: {"loss": next(losses)}, metric="loss", maximize=False, every=2)
    _, state = _fit_linear(epochs=5, model=model, callbacks=[every])  # epochs 2, 4 and the last, 5
    assert state.best.epoch == 3 and state.best.score == -1.0 and state.val_metrics == {"loss": 2.0}


def test_experiments_reload_a_run_with_its_own_data_seed(tmp_path):
    """experiments.paper.load_trained rebuilds the splits the run trained on: data_seed, not seed."""
    from experiments.paper import load_trained

    config = tiny(method="dropconnect", epochs=1, record_every=0, data_seed=5)
    path = train.run(config, tmp_path)
    loaded_config, splits, model = load_trained(path, cache={})
    expected, _, handle = train.build(config)
    handle.remove()
    assert loaded_config["data_seed"] == 5
    assert torch.equal(splits.train.tensors[0], expected.train.tensors[0])
    assert torch.equal(splits.test.tensors[0], expected.test.tensors[0])
    assert not model.training
