"""ddc.apply on any model, the way PyTorch users take their models: every way PyTorch copies,
serializes or rebuilds a module keeps the method acting on the copy's own parameters; layers
whose weight a parent reads get the method too; output methods refuse what they cannot mask."""

import copy
import io
import logging
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import ddc

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("dropout", "dropconnect", "standout", "ddc")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _trained(method, seed=0, steps=2):
    torch.manual_seed(seed)
    model = Net()
    handle = ddc.apply(model, method, layers=["fc1"], seed=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(steps):
        x = torch.randn(4, 6, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    return model, handle


def _via_torch_save(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


COPIES = {
    "deepcopy": copy.deepcopy,
    "pickle": lambda m: pickle.loads(pickle.dumps(m)),
    "torch.save/torch.load": _via_torch_save,
}


@pytest.mark.parametrize("how", list(COPIES))
@pytest.mark.parametrize("method", METHODS)
def test_a_copy_carries_the_method_on_its_own_parameters(method, how):
    model, _ = _trained(method)
    twin = COPIES[how](model)
    assert type(twin.fc1) is type(model.fc1) and isinstance(twin.fc1, nn.Linear)
    assert twin.fc1.ddc_method is not model.fc1.ddc_method
    x = torch.randn(5, 6)
    # same masks: the copy's generator continues from the same state
    assert torch.equal(twin(x), model(x))
    plain = Net()
    plain.load_state_dict(twin.state_dict())  # plain keys
    assert not torch.equal(twin(x), plain(x))  # the method acts in the copy
    twin.eval(), plain.eval()
    if method != "standout":  # (Standout's inference output is pi * a)
        assert torch.equal(twin(x), plain(x))
    twin.train()
    # the copy's method reads the copy's weights: changing the original's changes nothing there
    before = twin.eval()(x)
    with torch.no_grad():
        model.fc1.weight.mul_(3.0)
    assert torch.equal(twin(x), before)
    twin.train()
    twin(x).pow(2).mean().backward()
    assert twin.fc1.weight.grad is not None
    if method == "ddc":
        assert twin.fc1.ddc_method.weight_signal is not model.fc1.ddc_method.weight_signal


@pytest.mark.parametrize("method", METHODS)
def test_whole_model_torch_load_in_a_fresh_process(method, tmp_path):
    model, _ = _trained(method)
    path = tmp_path / "model.pt"
    torch.save(model, path)
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(11))
    expected = model(x)
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys, torch\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        f"model = torch.load({str(path)!r}, weights_only=False)\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        f"torch.save(model(x), {str(tmp_path / 'out.pt')!r})\n"
        "print(type(model.fc1).__module__, type(model.fc1).__name__, type(model.fc1.ddc_method).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)


def test_to_with_new_parameter_objects_and_assign_load():
    model, handle = _trained("ddc")
    method = handle.methods["fc1"]
    previous = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        old = model.fc1.weight
        model.to(torch.float64)
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(previous)
    assert model.fc1.weight is not old and model.fc1.weight.dtype == torch.float64
    x = torch.randn(4, 6, dtype=torch.float64)
    model(x).pow(2).mean().backward()  # the method reads the new parameter
    assert method.weight_signal.dtype == torch.float64
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(fresh, assign=True)
    assert model.fc1.weight is fresh["fc1.weight"] or torch.equal(model.fc1.weight, fresh["fc1.weight"])
    model(x).pow(2).mean().backward()
    method.keep_last = True
    model(x)
    assert (~method.last.keep_mask).any()


@pytest.mark.parametrize("method", METHODS)
def test_torch_compile_keeps_the_method(method):
    model, handle = _trained(method)
    reference = copy.deepcopy(model)
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(4, 6)
    out = compiled(x)
    assert torch.allclose(out, reference(x))  # the same masks as the eager copy
    out.pow(2).mean().backward()
    if method == "ddc":
        assert handle.methods["fc1"].weight_signal is not None


def _compiled_run(method, backend, reuse, monkeypatch):
    from ddc import _fastpath

    monkeypatch.setattr(_fastpath.WeightBuffer, "MIN_NUMEL", 1 if reuse else 1 << 62)
    torch.manual_seed(0)
    model = Net()
    handle = ddc.apply(model, method, layers=["fc1", "fc2"], seed=5)
    for layer_method in handle.methods.values():
        layer_method.keep_last = True
    forward = model if backend is None else torch.compile(model, backend=backend)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    masks = []
    for step in range(3):
        optimizer.zero_grad()
        forward(torch.randn(4, 6, generator=torch.Generator().manual_seed(step))).pow(2).mean().backward()
        optimizer.step()
        masks += [m.last.keep_mask for m in handle.methods.values() if m.last is not None and m.last.keep_mask is not None]
    return masks, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("reuse", [False, True], ids=["fresh", "reused"])
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("method", ["dropconnect", "ddc"])
def test_torch_compile_of_the_model_trains_as_eager(method, backend, reuse, monkeypatch):
    """torch.compile(model) through AOT autograd gives the eager masks and weights (a traced dtype view of the
    fast path's random words failed there); the fast path's loops run eagerly inside the compiled model."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
        eager_masks, eager_weights = _compiled_run(method, None, reuse, monkeypatch)
        masks, weights = _compiled_run(method, backend, reuse, monkeypatch)
    assert len(masks) == len(eager_masks) > 0
    assert all(torch.equal(a, b) for a, b in zip(masks, eager_masks))
    for a, b in zip(weights, eager_weights):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("method", METHODS)
def test_remove_restores_class_hooks_and_keys(method):
    model, handle = _trained(method)
    handle.remove()
    assert type(model.fc1) is nn.Linear and "ddc_method" not in model.fc1._modules
    assert not model._forward_pre_hooks and not model._forward_hooks
    assert not model.fc1.weight._post_accumulate_grad_hooks


# ----------------------------------------------------------------------------- bypassed forwards


class ReadsChildWeight(nn.Module):
    """A parent that uses its child's weight itself, as nn.MultiheadAttention does with out_proj."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        return nn.functional.linear(x, self.fc.weight, self.fc.bias)


@pytest.mark.parametrize("method", ["dropconnect", "ddc"])
def test_a_parent_reading_the_weight_gets_the_masked_weight(method):
    torch.manual_seed(0)
    model = nn.Sequential(ReadsChildWeight(), nn.ReLU(), nn.Linear(4, 2))
    handle = ddc.apply(model, method, layers=["0.fc"], seed=0, first_step="base") if method == "ddc" else ddc.apply(model, method, layers=["0.fc"], seed=0)
    m = handle.methods["0.fc"]
    m.keep_last = True
    x = torch.randn(3, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = model(x)
        keep, scale = m.last.keep_mask, m.last.scale
        w_eff = model[0].fc.weight.detach() * keep * scale
        expected = model[2](torch.relu(nn.functional.linear(x, w_eff, model[0].fc.bias)))
        assert torch.allclose(out, expected)
        out.sum().backward()
        model(x).sum().backward()  # a second step: no bypass warning
    assert model[0].fc.weight is model[0].fc._parameters["weight"]  # outside a forward: the parameter
    if method == "ddc":
        assert m.weight_signal is not None
    model.eval()
    assert torch.equal(model(x), model[2](torch.relu(nn.functional.linear(x, model[0].fc.weight, model[0].fc.bias))))


def test_multihead_attention_out_proj_takes_the_method():
    torch.manual_seed(0)
    block = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    plain = copy.deepcopy(block)
    handle = ddc.apply(block, "ddc", layers=nn.Linear, seed=0, first_step="base")
    assert set(handle.layers) == {"self_attn.out_proj", "linear1", "linear2"}
    x = torch.randn(2, 5, 8)
    out = block(x)
    assert not torch.allclose(out, plain(x))
    out.pow(2).sum().backward()
    block(x).pow(2).sum().backward()
    assert handle.methods["self_attn.out_proj"].weight_signal is not None
    block.eval(), plain.eval()
    assert torch.allclose(block(x), plain(x))


def test_selection_by_type_lists_what_it_picked(caplog):
    block = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)
    with caplog.at_level(logging.INFO, logger="ddc"):
        ddc.apply(block, "dropconnect", layers=nn.Linear, seed=0)
    assert "picked 3 layer(s): self_attn.out_proj, linear1, linear2" in caplog.text


def test_a_weight_used_outside_every_forward_the_method_sees_is_named():
    """Applied to out_proj alone, the MultiheadAttention that reads its weight is not the model
    the method was applied to: after the first training step a RuntimeWarning names the layer."""
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(8, 2, batch_first=True)
    ddc.apply(attention.out_proj, "ddc", layers=[nn.Linear], seed=0)
    x = torch.randn(2, 5, 8)
    with pytest.warns(RuntimeWarning, match="layer '\\(root\\)'.*did not pass through method='ddc'"):
        attention(x, x, x)[0].sum().backward()


# ----------------------------------------------------------------------------- output methods


class TupleOut(nn.Module):
    def forward(self, x):
        return x, x


@pytest.mark.parametrize("method", ["dropout", "standout"])
@pytest.mark.parametrize(
    "layer, match",
    [
        (lambda: nn.LSTM(4, 4), "LSTM, whose output is not a tensor"),
        (lambda: nn.MultiheadAttention(4, 2), "MultiheadAttention, whose output is not a tensor"),
        (lambda: nn.MaxPool1d(2, return_indices=True), "MaxPool1d, whose output is not a tensor"),
        (lambda: nn.Sequential(nn.Linear(4, 4)), "is a container"),
        (lambda: nn.ModuleList([nn.Linear(4, 4)]), "is a container"),
    ],
)
def test_output_methods_refuse_non_tensor_outputs_and_containers(method, layer, match):
    model = nn.ModuleDict({"part": layer()})
    if method == "standout" and "MaxPool" in match:
        match = "MaxPool1d, whose output is not a tensor"
    with pytest.raises(ValueError, match=f"layers: 'part' {'is a ' if 'container' not in match else ''}{match}"):
        ddc.apply(model, method, layers=["part"])
    assert not ddc.regularized_layers(model)


@pytest.mark.parametrize("method", ["dropout", "standout"])
def test_an_output_method_on_a_module_returning_a_tuple_says_so(method):
    model = nn.ModuleDict({"pair": TupleOut()})
    ddc.apply(model, method, layers=["pair"], seed=0)
    with pytest.raises(TypeError, match="layer 'pair' returned a tuple, not a tensor"):
        model["pair"](torch.randn(2, 4))


# ----------------------------------------------------------------------------- shared layers


class Unrolled(nn.Module):
    """One Linear applied three times (an unrolled recurrence, or a tied layer)."""

    def __init__(self):
        super().__init__()
        self.cell = nn.Linear(4, 4)

    def forward(self, x):
        for _ in range(3):
            x = torch.tanh(self.cell(x))
        return x


def _unrolled_with(w_eff, model, x):
    for _ in range(3):
        x = torch.tanh(nn.functional.linear(x, w_eff, model.cell.bias.detach()))
    return x


def _unrolled_ddc(**options):
    torch.manual_seed(0)
    model = Unrolled()
    method = ddc.apply(model, "ddc", layers=["cell"], seed=0, first_step="base", **options).methods["cell"]
    method.keep_last = True
    return model, method


@pytest.mark.parametrize("update", ["autograd", "reference"])
def test_a_layer_used_several_times_in_one_forward_has_one_mask_and_the_whole_gradient(update):
    model, m = _unrolled_ddc(update=update)
    x = torch.randn(5, 4)
    out = model(x)
    keep, scale = m.last.keep_mask, m.last.scale
    w_eff = (model.cell.weight.detach() * keep * scale).requires_grad_()
    expected = _unrolled_with(w_eff, model, x)
    torch.testing.assert_close(out, expected)  # one mask serves all three uses
    out.pow(2).sum().backward()
    expected.pow(2).sum().backward()
    torch.testing.assert_close(m.weight_signal, w_eff.grad)  # dL/dW_eff summed over the uses


@pytest.mark.parametrize("grad_ema", [0.0, 0.5])
def test_two_forward_passes_before_one_backward_give_the_sum_of_their_gradients(grad_ema):
    model, m = _unrolled_ddc(grad_ema=grad_ema)
    x1, x2 = torch.randn(5, 4), torch.randn(5, 4)
    model(x1).sum().backward()  # a first signal (for the EMA)
    before = m.weight_signal.clone()
    effective = []
    outs = []
    for x in (x1, x2):
        outs.append(model(x))
        effective.append((model.cell.weight.detach() * m.last.keep_mask * m.last.scale).requires_grad_())
    assert not torch.equal(effective[0], effective[1])  # two forward passes, two masks
    (outs[0].pow(2).sum() + outs[1].sum()).backward()
    (_unrolled_with(effective[0], model, x1).pow(2).sum() + _unrolled_with(effective[1], model, x2).sum()).backward()
    total = effective[0].grad + effective[1].grad
    expected = total if grad_ema == 0 else torch.lerp(total.abs(), before, grad_ema)
    torch.testing.assert_close(m.weight_signal, expected)


def test_a_layer_called_by_itself_draws_a_mask_per_call():
    torch.manual_seed(0)
    layer = nn.Linear(6, 6)
    handle = ddc.apply(layer, "dropconnect", layers=[nn.Linear], seed=0)
    m = handle.methods[""]
    m.keep_last = True
    layer(torch.randn(2, 6))
    first = m.last.keep_mask.clone()
    layer(torch.randn(2, 6))
    assert not torch.equal(first, m.last.keep_mask)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_model_saved_with_accelerator_generators_loads_on_a_cpu_machine():
    rng = ddc.MaskRNG(seed=4)
    rng.get("cpu")
    state = rng.__getstate__()
    state["states"]["cuda:0"] = state["states"]["cpu"].clone()  # as saved from a GPU run
    loaded = ddc.MaskRNG.__new__(ddc.MaskRNG)
    loaded.__setstate__(state)
    assert set(loaded._generators) == {"cpu"}
    assert torch.equal(torch.rand(3, generator=loaded.get("cpu")), torch.rand(3, generator=rng.get("cpu")))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("method", METHODS)
def test_torchscript_is_refused_with_a_message(method):
    model, handle = _trained(method)
    with pytest.raises(RuntimeError, match="torch.jit.script cannot compile a layer carrying method=.*'fc1'.*torch.compile"):
        torch.jit.script(model)
    handle.remove()
    torch.jit.script(model)  # the plain model scripts
