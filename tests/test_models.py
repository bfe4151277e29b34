"""Tests for ddc.models: output shapes, declared layers, flatten sizes, init, parameter counts, registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ddc import models
from ddc.models import (
    MODELS,
    MLP,
    VGG13BN,
    AlexNet,
    LinearRegression2D,
    LocallyConnected2d,
    ResNet18,
    ResNet20,
    SimpleCNN1,
    SimpleCNN2,
    VisionTransformer,
    build,
    vit_projection_layers,
)


#: (registry name, input_shape) pairs that must build and run; AlexNet is tested separately (it is big).
SUPPORTED = [
    ("mlp", (1, 28, 28)),
    ("mlp", (3, 32, 32)),
    ("mlp", (1, 40)),
    ("simplecnn1", (1, 28, 28)),
    ("simplecnn1", (3, 32, 32)),
    ("simplecnn1", (1, 40)),
    ("simplecnn1", (40,)),
    ("simplecnn2", (3, 32, 32)),
    ("simplecnn2", (1, 28, 28)),
    ("vgg13bn", (3, 32, 32)),
    ("resnet18", (3, 32, 32)),
    ("resnet18", (1, 28, 28)),
    ("resnet20", (3, 32, 32)),
    ("resnet20", (1, 28, 28)),
    ("vit", (1, 28, 28)),
    ("vit", (3, 32, 32)),
]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_declared_layers(model: nn.Module, expected_type: type = nn.Linear) -> None:
    assert model.ddc_layers and model.dropout_layers
    for name in (*model.ddc_layers, *model.dropout_layers):
        assert isinstance(model.get_submodule(name), expected_type), name


def check_init(model: nn.Module) -> None:
    """Biases zero; BN weight 1; Linear weights inside the Xavier-uniform bound (and not all zero)."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, LocallyConnected2d)):
            if module.bias is not None:
                assert torch.count_nonzero(module.bias) == 0
            assert torch.count_nonzero(module.weight) > 0
        if isinstance(module, nn.Linear):
            bound = (6.0 / (module.in_features + module.out_features)) ** 0.5
            assert module.weight.abs().max() <= bound
            if module.weight.numel() >= 100:  # uniform over the whole range, not a narrower default
                assert module.weight.abs().max() > 0.8 * bound
        if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
            assert torch.all(module.weight == 1) and torch.count_nonzero(module.bias) == 0


@pytest.fixture(scope="module")
def alexnet_rgb() -> AlexNet:
    torch.manual_seed(0)
    return AlexNet(num_classes=10, in_channels=3)


@pytest.mark.parametrize("name, shape", SUPPORTED)
def test_build_forward_shape_layers_and_init(name, shape):
    torch.manual_seed(0)
    model = build(name, input_shape=shape, num_classes=7)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    check_declared_layers(model)
    check_init(model)


@pytest.mark.parametrize(
    "shape, in_features", [((1, 28, 28), 256), ((3, 32, 32), 576), ((1, 40), 256)]
)
def test_simplecnn1_flatten_size(shape, in_features):
    model = build("simplecnn1", input_shape=shape, num_classes=10)
    assert model.linear1.in_features == in_features
    assert model.linear1.out_features == 64 and model.linear2.in_features == 64


def test_simplecnn1_has_no_relu_after_conv1():
    """The authors' SimpleCNN1 max-pools conv1's raw output: pool1 must see negative values."""
    model = SimpleCNN1()
    assert [name for name, _ in model.named_children()][:3] == ["conv1", "pool1", "conv2"]
    pool1_inputs = []
    model.pool1.register_forward_pre_hook(lambda module, args: pool1_inputs.append(args[0]))
    with torch.no_grad():
        model(torch.randn(2, 1, 28, 28))
    assert len(pool1_inputs) == 1 and (pool1_inputs[0] < 0).any()


def test_simplecnn1_1d_uses_conv1d_and_accepts_flat_sequences():
    model = SimpleCNN1(in_channels=1, num_classes=10, input_size=40, dims=1)
    assert isinstance(model.conv1, nn.Conv1d) and isinstance(model.pool2, nn.AvgPool1d)
    x = torch.randn(3, 40)
    torch.testing.assert_close(model(x), model(x.unsqueeze(1)))


@pytest.mark.parametrize("size, in_features", [(32, 1568), (28, 1152)])
def test_simplecnn2_flatten_size_and_local_layers(size, in_features):
    model = SimpleCNN2(in_channels=3 if size == 32 else 1, input_size=size)
    assert model.linear1.in_features == in_features and model.linear1.out_features == 128
    assert isinstance(model.local3, LocallyConnected2d) and isinstance(model.local4, LocallyConnected2d)
    assert (model.local3.out_channels, model.local4.out_channels) == (16, 32)
    assert isinstance(model.norm1, nn.LocalResponseNorm)


def test_locally_connected_weights_are_unshared():
    layer = LocallyConnected2d(1, 1, input_size=3, kernel_size=3, padding=1, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[4, 0, 4] = 1.0  # centre position copies its centre pixel, every other position outputs 0
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    expected = torch.zeros(1, 1, 3, 3)
    expected[0, 0, 1, 1] = 4.0
    torch.testing.assert_close(layer(x), expected)


def test_locally_connected_matches_conv_when_weights_are_shared():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    local = LocallyConnected2d(2, 3, input_size=5, kernel_size=3, padding=1)
    with torch.no_grad():
        local.weight.copy_(conv.weight.reshape(3, -1).expand(25, 3, 18))
        local.bias.copy_(conv.bias.view(3, 1, 1).expand(3, 5, 5))
    x = torch.randn(2, 2, 5, 5)
    torch.testing.assert_close(local(x), conv(x))


def test_locally_connected_rejects_wrong_input_size():
    layer = LocallyConnected2d(1, 1, input_size=5, kernel_size=3)
    with pytest.raises(ValueError, match="built for 5x5"):
        layer(torch.randn(1, 1, 6, 6))


def test_alexnet_layout_and_upsampling(alexnet_rgb):
    model = alexnet_rgb
    assert model.linear1.in_features == 9216 and model.linear1.out_features == 4096
    assert (model.linear2.in_features, model.linear2.out_features) == (4096, 4096)
    assert model.linear3.out_features == 10
    check_declared_layers(model)
    check_init(model)
    seen_sizes = []
    handle = model.features.register_forward_pre_hook(lambda module, args: seen_sizes.append(args[0].shape[-1]))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    handle.remove()
    assert seen_sizes == [224]
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


def test_alexnet_gray_28x28():
    model = build("alexnet", input_shape=(1, 28, 28), num_classes=10)
    assert model.features[0].in_channels == 1
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_vgg13bn_layout():
    model = VGG13BN(num_classes=10)
    assert model.linear1.in_features == 512 and model.linear1.out_features == 512
    assert model.linear3.out_features == 10
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512, 512, 512]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.features) == 10


def test_vgg13bn_rejects_28x28_clearly():
    with pytest.raises(ValueError, match="input_size must be at least 32"):
        build("vgg13bn", input_shape=(1, 28, 28), num_classes=10)


def test_resnet_parameter_counts_and_heads():
    resnet20, resnet18 = ResNet20(), ResNet18()
    assert parameter_count(resnet20) == 269_722  # He et al.: 0.27M
    assert parameter_count(resnet18) == 11_173_962  # ~11.2M
    assert resnet20.fc.in_features == 64 and resnet18.fc.in_features == 512
    assert resnet20.ddc_layers == ("fc",) == resnet18.dropout_layers
    assert isinstance(resnet20.layer2[0].shortcut, models.PadShortcut)  # option A
    assert isinstance(resnet18.layer2[0].shortcut, nn.Sequential)  # option B projection
    assert len(resnet20.layer1) == len(resnet20.layer3) == 3 and len(resnet18.layer4) == 2
    assert resnet20.conv1.stride == (1, 1) and resnet18.conv1.kernel_size == (3, 3)


def test_resnet20_option_a_shortcut_pads_with_zeros():
    shortcut = models.PadShortcut(16, 32, stride=2)
    out = shortcut(torch.ones(1, 16, 8, 8))
    assert out.shape == (1, 32, 4, 4)
    assert out[:, :8].sum() == 0 and out[:, 24:].sum() == 0 and torch.all(out[:, 8:24] == 1)


def test_linear_regression_2d():
    model = build("linreg2d", input_shape=(2,), num_classes=0)
    assert isinstance(model, LinearRegression2D)
    assert model.linear.weight.shape == (1, 2) and model.linear.bias is None
    assert [name for name, _ in model.named_parameters()] == ["linear.weight"]
    check_declared_layers(model)
    x = torch.randn(5, 2)
    torch.testing.assert_close(model(x), x @ model.linear.weight.T)


def test_mlp_hidden_widths():
    model = MLP(40, hidden=(32, 16, 8), num_classes=3)
    linears = [(name, m.in_features, m.out_features) for name, m in model.named_children() if isinstance(m, nn.Linear)]
    assert linears == [("linear1", 40, 32), ("linear2", 32, 16), ("linear3", 16, 8), ("linear4", 8, 3)]
    assert model(torch.randn(2, 1, 40)).shape == (2, 3)


def test_every_registered_model_declares_layers():
    assert set(MODELS) == {"linreg2d", "mlp", "simplecnn1", "simplecnn2", "alexnet", "vgg13bn", "resnet18", "resnet20", "vit"}
    for model_class in MODELS.values():
        assert isinstance(model_class.ddc_layers, tuple) and model_class.ddc_layers
        assert model_class.dropout_layers == model_class.ddc_layers


def test_init_is_seeded():
    torch.manual_seed(1)
    first = SimpleCNN1()
    torch.manual_seed(1)
    second = SimpleCNN1()
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "resnet50", "input_shape": (3, 32, 32), "num_classes": 10}, "model must be one of linreg2d"),
        ({"name": "resnet18", "input_shape": (1, 40), "num_classes": 10}, "model 'resnet18' needs a square image"),
        ({"name": "simplecnn2", "input_shape": (40,), "num_classes": 10}, "model 'simplecnn2'"),
        ({"name": "alexnet", "input_shape": (3, 32, 16), "num_classes": 10}, "square image"),
        ({"name": "linreg2d", "input_shape": (1, 28, 28), "num_classes": 0}, "needs input_shape \\(2,\\)"),
        ({"name": "linreg2d", "input_shape": (2,), "num_classes": 10}, "num_classes must be 0 or 1"),
        ({"name": "mlp", "input_shape": (1, 28, 28), "num_classes": 0}, "num_classes must be >= 1"),
        ({"name": "mlp", "input_shape": (0, 28), "num_classes": 10}, "input_shape must be"),
        ({"name": "simplecnn1", "input_shape": (1, 8, 8), "num_classes": 10}, "input_size must be at least 15"),
        ({"name": "simplecnn2", "input_shape": (3, 5, 5), "num_classes": 10}, "input_size must be at least 7"),
        ({"name": "vit", "input_shape": (1, 40), "num_classes": 10}, "model 'vit' needs a square image"),
        ({"name": "vit", "input_shape": (1, 30, 30), "num_classes": 10}, "multiple of 4"),
        ({"name": "vit", "input_shape": (1, 28, 28), "num_classes": 0}, "num_classes must be >= 1"),
    ],
)
def test_build_errors(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=match):
        build(name, **kwargs)


def test_build_is_case_insensitive():
    assert isinstance(build("ResNet20", input_shape=(3, 32, 32), num_classes=10), ResNet20)


# ----------------------------------------------------------------------------- Vision Transformer


def test_vit_layout_names_and_parameter_count():
    torch.manual_seed(0)
    model = build("vit", input_shape=(1, 28, 28), num_classes=10)
    assert isinstance(model, VisionTransformer) and len(model.blocks) == VisionTransformer.DEFAULT_DEPTH == 4
    assert model.patch_embed.num_patches == 49 and model.pos_embed.shape == (1, 50, 64)
    assert model.patch_embed.proj.in_features == 16 and model.head.out_features == 10
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    per_block = ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]
    assert linears == ["patch_embed.proj", *[f"blocks.{b}.{n}" for b in range(4) for n in per_block], "head"]
    assert model.ddc_layers == model.dropout_layers == tuple(linears[1:-1]) == vit_projection_layers(4)
    assert VisionTransformer.ddc_layers == vit_projection_layers(4)
    # patch 1*4*4 -> 64, class token, 50 positions, 4 blocks of (2 LayerNorms, qkv, proj, fc1, fc2), final LayerNorm, head
    block = 2 * 128 + (64 * 192 + 192) + (64 * 64 + 64) + (64 * 128 + 128) + (128 * 64 + 64)
    assert parameter_count(model) == (16 * 64 + 64) + 64 + 50 * 64 + 4 * block + 128 + (64 * 10 + 10) == 139_018
    assert not any(isinstance(m, (nn.Dropout, nn.BatchNorm2d)) for m in model.modules())
    assert 0 < model.pos_embed.std() < 0.05 and 0 < model.cls_token.std() < 0.05


def test_vit_custom_depth_declares_its_own_layers():
    model = VisionTransformer(num_classes=3, in_channels=3, input_size=32, patch_size=8, dim=32, depth=2, heads=2, mlp_hidden=48)
    assert model.ddc_layers == vit_projection_layers(2) and len(model.ddc_layers) == 8
    assert model.patch_embed.num_patches == 16
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(ValueError, match="heads must divide dim"):
        VisionTransformer(dim=30, heads=4)
    with pytest.raises(ValueError, match="patch_size must divide"):
        VisionTransformer(input_size=28, patch_size=5)
    with pytest.raises(ValueError, match="depth must be a positive integer"):
        VisionTransformer(depth=0)
    with pytest.raises(ValueError, match="built for 1x28x28"):
        VisionTransformer()(torch.randn(1, 1, 32, 32))


def test_vit_patches_and_attention_match_a_direct_computation():
    torch.manual_seed(0)
    model = VisionTransformer(num_classes=4, in_channels=2, input_size=8, patch_size=4, dim=8, depth=1, heads=2, mlp_hidden=16)
    x = torch.randn(3, 2, 8, 8)
    # patch k (row-major over the 2x2 grid) is the flattened (channel, row, column) block
    patches = torch.stack([x[:, :, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].reshape(3, -1) for i in range(2) for j in range(2)], 1)
    torch.testing.assert_close(model.patch_embed(x), model.patch_embed.proj(patches))
    attn = model.blocks[0].attn
    tokens = torch.randn(3, 5, 8)
    q, k, v = attn.qkv(tokens).split(8, dim=-1)
    heads = [torch.softmax(q[..., h * 4 : h * 4 + 4] @ k[..., h * 4 : h * 4 + 4].transpose(1, 2) / 2.0, -1) @ v[..., h * 4 : h * 4 + 4]
             for h in range(2)]
    torch.testing.assert_close(attn(tokens), attn.proj(torch.cat(heads, -1)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method, options", [("ddc", {}), ("dropconnect", {"p": 0.3}), ("dropout", {"p": 0.3})])
def test_vit_takes_methods_on_its_projections_and_trains(method, options):
    from ddc.apply import apply

    torch.manual_seed(0)
    model = build("vit", input_shape=(1, 28, 28), num_classes=10)
    layers = [name for name in model.ddc_layers if ".attn." in name]
    handle = apply(model, method, layers=layers, seed=1, **options)
    assert list(handle.methods) == layers == [f"blocks.{b}.attn.{n}" for b in range(4) for n in ("qkv", "proj")]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.train()
    for _ in range(2):  # DDC's first step passes through to capture a gradient; the second masks
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters() if p.grad is not None)
    assert not torch.equal(before["blocks.0.attn.qkv.weight"], model.blocks[0].attn.qkv.weight)
    model.eval()
    with torch.no_grad():
        masked_eval = model(x)
        handle.remove()
        torch.testing.assert_close(masked_eval, model(x))  # eval mode computes the plain network
    assert "ddc_method" not in dict(model.named_modules())["blocks.0.attn.qkv"]._modules


def test_vit_default_placement_via_apply():
    from ddc.apply import apply

    model = build("vit", input_shape=(1, 28, 28), num_classes=10)
    handle = apply(model, "ddc")  # layers=None: the model's declared projections
    assert tuple(handle.methods) == vit_projection_layers(4)
    handle.remove()


def test_vit_recipe_keeps_adam_rates_at_every_profile():
    from ddc import recipes
    from ddc.train import TrainConfig, learning_rate

    for profile in recipes.PROFILES:
        fields = recipes.recipe("fashion_mnist-vit", profile)
        assert fields["model"] == "vit" and fields["optimizer"] == "adam"
        assert fields["lr"] == 1e-3 and fields["min_lr"] < fields["lr"]  # a cosine schedule, not a constant one
        config = TrainConfig.from_dict({**fields, "progress": False})
        assert learning_rate(config, config.epochs - 1) < learning_rate(config, config.warmup_epochs)
    assert recipes.recipe("fashion_mnist-resnet18", "quick")["lr"] == 0.01
