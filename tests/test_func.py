"""torch.func in train mode: functional_call, grad and vmap over a model carrying a method."""

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

import ddc

METHODS = ("dropout", "dropconnect", "standout", "ddc")


def _model(method, seed=0, **options):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    handle = ddc.apply(model, method, layers=["0"], seed=3, **options)
    return model, handle


def _params(model):
    return {name: p.detach() for name, p in model.named_parameters()}


@pytest.mark.parametrize("method", METHODS)
def test_functional_call_in_train_mode_is_the_module_call(method):
    model, _ = _model(method)
    twin = copy.deepcopy(model)  # same generator state
    x = torch.randn(4, 6)
    assert torch.equal(functional_call(model, _params(model), (x,)), twin(x))
    model.eval(), twin.eval()
    assert torch.equal(functional_call(model, _params(model), (x,)), twin(x))


@pytest.mark.parametrize("update", ["autograd", "reference"])
@pytest.mark.parametrize("method", METHODS)
def test_torch_func_grad_equals_autograd_and_feeds_the_signal(method, update):
    options = dict(update=update, first_step="base") if method in ("ddc", "dropconnect") else {}
    if method == "dropconnect":
        options.pop("first_step")
    model, handle = _model(method, **options)
    twin, twin_handle = copy.deepcopy(model), None
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))

    def loss(params):
        return nn.functional.cross_entropy(functional_call(model, params, (x,)), y)

    grads = grad(loss)(_params(model))
    nn.functional.cross_entropy(twin(x), y).backward()
    for name, p in twin.named_parameters():
        torch.testing.assert_close(grads[name], p.grad)
    if method == "ddc":
        ours, theirs = handle.methods["0"].weight_signal, twin[0].ddc_method.weight_signal
        assert not torch._C._functorch.is_functorch_wrapped_tensor(ours)  # a plain tensor, kept past the transform
        torch.testing.assert_close(ours, theirs)
        assert ours.untyped_storage().data_ptr() != grads["0.weight"].untyped_storage().data_ptr()


def test_vmap_per_example_gradients_with_one_mask_sum_to_the_batch_gradient():
    model, handle = _model("ddc", first_step="base")
    method = handle.methods["0"]
    method.keep_last = True
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))

    def loss(params, xb, yb):
        return nn.functional.cross_entropy(functional_call(model, params, (xb.unsqueeze(0),)), yb.unsqueeze(0), reduction="sum")

    per_example = vmap(grad(loss), in_dims=(None, 0, 0), randomness="same")(_params(model), x, y)
    assert per_example["0.weight"].shape == (5, 8, 6)
    # one mask for the vmapped batch (randomness="same"): the sum is the batch's gradient
    keep, scale = method.last.keep_mask, method.last.scale
    w = model[0].weight.detach().requires_grad_()
    w_eff = (w * keep * scale).detach().requires_grad_()
    expected = nn.functional.cross_entropy(model[2](torch.relu(nn.functional.linear(x, w_eff, model[0].bias))), y, reduction="sum")
    expected.backward()
    torch.testing.assert_close(per_example["0.weight"].sum(0), w_eff.grad * keep * scale)
    # the signal is the batch's dL/dW_eff (the per-example ones summed), a plain tensor
    torch.testing.assert_close(method.weight_signal, w_eff.grad)
    assert not torch._C._functorch.is_functorch_wrapped_tensor(method.weight_signal)


def test_vmap_with_different_randomness_gives_each_example_its_own_mask():
    model, handle = _model("dropconnect", p=0.5)
    method = handle.methods["0"]
    x = torch.ones(6, 6)
    out = vmap(lambda xb: model(xb.unsqueeze(0)).squeeze(0), randomness="different")(x)
    assert not all(torch.equal(out[0], out[i]) for i in range(1, 6))
    same = vmap(lambda xb: model(xb.unsqueeze(0)).squeeze(0), randomness="same")(x)
    assert all(torch.equal(same[0], same[i]) for i in range(1, 6)), (same, different)
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(lambda xb: model(xb.unsqueeze(0)).squeeze(0))(x)  # torch's default: say which randomness
    assert method.active


def test_an_ensemble_by_stack_module_state_trains_in_train_mode():
    models = [_model("ddc", seed=s, first_step="base")[0] for s in range(3)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = torch.randn(4, 6)

    def run(p, b, xb):
        return functional_call(base, (p, b), (xb,)).pow(2).mean()

    losses = vmap(run, in_dims=(0, 0, None), randomness="different")(params, buffers, x)
    assert losses.shape == (3,) and torch.isfinite(losses).all()


@pytest.mark.parametrize("method, options", [("dropout", dict(p=0.5)), ("standout", dict(alpha=1.0, beta=0.0)),
                                             ("dropconnect", dict(p=0.5)), ("ddc", dict(first_step="base"))])
def test_vmap_randomness_decides_the_masks_of_every_method(method, options):
    """Output methods too: 'different' gives each vmapped entry its own mask, 'same' one for all, and
    per-example gradients with one mask ('same') sum to the batch's gradient of that mask."""
    model, _ = _model(method, **options)
    x = torch.ones(6, 6)
    row = lambda xb: model(xb.unsqueeze(0)).squeeze(0)  # noqa: E731
    different = vmap(row, randomness="different")(x)
    assert not all(torch.allclose(different[0], different[i]) for i in range(1, 6))
    same = vmap(row, randomness="same")(x)
    assert all(torch.allclose(same[0], same[i]) for i in range(1, 6)), same  # (batched kernels: low bits may differ)
    xs, ys = torch.randn(5, 6), torch.randint(0, 3, (5,))

    def loss(params, xb, yb):
        return nn.functional.cross_entropy(functional_call(model, params, (xb.unsqueeze(0),)), yb.unsqueeze(0), reduction="sum")

    per_example = vmap(grad(loss), in_dims=(None, 0, 0), randomness="different")(_params(model), xs, ys)
    assert per_example["0.weight"].shape == (5, 8, 6) and torch.isfinite(per_example["0.weight"]).all()
