"""Models used in the Dynamic DropConnect experiments (plain ``nn.Module`` s).

Every model carries two class attributes naming its paper-default layers by
qualified module name (``model.get_submodule(name)``):

* ``ddc_layers``: where DDC / DropConnect act (the first fully connected layer
  after the feature extractor, ``linear1``; ``fc`` for the ResNets; ``linear``
  for the 2-D regression; every attention and MLP projection for the Vision
  Transformer, whose names depend on its depth, so each instance spells them out).
* ``dropout_layers``: where the Dropout baseline masks the *output* (the same
  layer; the paper puts ``nn.Dropout`` after that layer's output, before the ReLU).

Initialisation follows the authors' recipe (:func:`init_weights`): Xavier-uniform
weights for Linear / Conv / locally connected layers, zero biases, BatchNorm and
LayerNorm weight 1 and bias 0 (the ViT's class token and position embedding:
normal with std 0.02). None of the models contains a Dropout layer of its own.

Input shapes match :mod:`ddc.data`: images ``(C, H, W)``, MNIST-1D ``(1, 40)``
(``(40,)`` is accepted too), the synthetic regression ``(2,)``. Use
:func:`build` to pick the right variant from an input shape.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LocallyConnected2d",
    "LinearRegression2D",
    "MLP",
    "SimpleCNN1",
    "SimpleCNN2",
    "AlexNet",
    "VGG13BN",
    "PadShortcut",
    "BasicBlock",
    "CifarResNet",
    "ResNet18",
    "ResNet20",
    "PatchEmbedding",
    "MultiHeadSelfAttention",
    "FeedForward",
    "TransformerBlock",
    "vit_projection_layers",
    "VisionTransformer",
    "MODELS",
    "build",
    "init_weights",
]


class LocallyConnected2d(nn.Module):
    """A 2-D convolution with unshared weights: every output position has its own filter.

    ``input_size`` is the (square) spatial size of the input; output size is
    ``(input_size + 2*padding - kernel_size) // stride + 1``. Weights have shape
    ``(positions, out_channels, in_channels * kernel_size**2)``; bias
    ``(out_channels, out_size, out_size)``. The layer is cuda-convnet's
    "local" layer (Krizhevsky's ``layers-conv-local-11pct``), used by :class:`SimpleCNN2`.

    Shapes: input ``(N, in_channels, input_size, input_size)``, output
    ``(N, out_channels, out_size, out_size)``.

    Raises:
        ValueError: at construction, ``input_size`` is too small for ``kernel_size``
            and ``padding``; in ``forward``, the input's spatial size is not ``input_size``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        input_size: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
    ):
        super().__init__()
        output_size = (input_size + 2 * padding - kernel_size) // stride + 1
        if output_size < 1:
            raise ValueError(
                f"input_size must be at least {kernel_size - 2 * padding} for kernel_size={kernel_size}, "
                f"padding={padding}; got {input_size}"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.input_size, self.output_size = input_size, output_size
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        patch_size = in_channels * kernel_size * kernel_size
        self.weight = nn.Parameter(torch.empty(output_size * output_size, out_channels, patch_size))
        self.bias = nn.Parameter(torch.empty(out_channels, output_size, output_size)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform with a convolution's fans (per position); zero bias.

        ``U(-a, a)``, ``a = sqrt(6 / (fan_in + fan_out))`` (Glorot & Bengio 2010, eq. 16).

        Raises:
            Nothing.
        """
        receptive_field = self.kernel_size * self.kernel_size
        fan_in, fan_out = self.in_channels * receptive_field, self.out_channels * receptive_field
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, H, W)`` to ``(N, out_channels, H_out, W_out)``.

        Raises:
            ValueError: ``H x W`` is not the size the layer was built for.
        """
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(
                f"LocallyConnected2d built for {self.input_size}x{self.input_size} inputs; "
                f"got spatial size {tuple(x.shape[-2:])}"
            )
        patches = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)  # (N, patch, L)
        out = torch.einsum("npl,lop->nol", patches, self.weight)
        out = out.reshape(x.shape[0], self.out_channels, self.output_size, self.output_size)
        return out + self.bias if self.bias is not None else out

    def extra_repr(self) -> str:
        """The layer's sizes in the module's repr.

        Raises:
            Nothing.
        """
        return (
            f"{self.in_channels}, {self.out_channels}, input_size={self.input_size}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
        )


def init_weights(model: nn.Module) -> nn.Module:
    """Authors' init, in place: Xavier-uniform Linear/Conv/locally connected weights, zero biases, BN (1, 0); returns ``model``.

    Xavier-uniform draws from ``U(-a, a)``, ``a = sqrt(6 / (fan_in + fan_out))``
    (Glorot & Bengio 2010, eq. 16), as the authors' code (arXiv 2502.19948) does.
    Raises nothing of its own.
    """
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)) and module.weight is not None:
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, LocallyConnected2d):
            module.reset_parameters()
    return model


def _pooled(size: int, kernel: int = 3, stride: int = 2) -> int:
    """Spatial size after a pooling layer without padding (floor mode)."""
    return (size - kernel) // stride + 1


# --------------------------------------------------------------------------- small models


class LinearRegression2D(nn.Module):
    """y = w1*x1 + w2*x2: one ``nn.Linear(2, 1, bias=False)`` named ``linear``. Input (N, 2) -> (N, 1).

    The paper's synthetic regression (arXiv 2502.19948, section 4.1): DDC on two weights.

    Raises:
        Nothing.
    """

    ddc_layers: tuple[str, ...] = ("linear",)
    dropout_layers: tuple[str, ...] = ("linear",)

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1, bias=False)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 2)`` to ``(N, 1)``.

        Raises:
            Nothing of its own; input of another shape raises the layers' ``RuntimeError``.
        """
        return self.linear(x)


class MLP(nn.Module):
    """Flatten, then Linear+ReLU per hidden width, then a Linear classifier.

    Layers are named ``linear1`` .. ``linear{len(hidden)+1}``; ReLUs ``act1`` ...

    Shapes: input ``(N, *)`` with ``in_features`` values per example, output ``(N, num_classes)`` logits.

    Raises:
        ValueError: ``hidden`` is empty.
    """

    ddc_layers: tuple[str, ...] = ("linear1",)
    dropout_layers: tuple[str, ...] = ("linear1",)

    def __init__(self, in_features: int, hidden: tuple[int, ...] = (256, 128), num_classes: int = 10):
        super().__init__()
        if not hidden:
            raise ValueError("hidden must name at least one hidden width; got ()")
        self.flatten = nn.Flatten()
        widths = [in_features, *hidden]
        for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
            self.add_module(f"linear{index}", nn.Linear(width_in, width_out))
            self.add_module(f"act{index}", nn.ReLU())
        self.add_module(f"linear{len(hidden) + 1}", nn.Linear(widths[-1], num_classes))
        self.num_hidden = len(hidden)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, *input_shape)`` (flattened to ``in_features``) to ``(N, num_classes)`` logits.

        Raises:
            Nothing of its own; input of another shape raises the layers' ``RuntimeError``.
        """
        x = self.flatten(x)
        for index in range(1, self.num_hidden + 1):
            x = getattr(self, f"act{index}")(getattr(self, f"linear{index}")(x))
        return getattr(self, f"linear{self.num_hidden + 1}")(x)


class SimpleCNN1(nn.Module):
    """The authors' SimpleCNN1 (MNIST / Fashion-MNIST / CIFAR, and MNIST-1D with ``dims=1``).

    conv1 (32, k5, p2) -> MaxPool(3, 2) -> conv2 (32, k5, p2) -> ReLU -> AvgPool(3, 2)
    -> conv3 (64, k5, p2) -> ReLU -> AvgPool(3, 2) -> flatten -> linear1 (-> 64)
    -> ReLU -> linear2 (-> classes). linear1's in-features: 256 for 1x28x28,
    576 for 3x32x32, 256 for 1x40 (1-D).

    ``dims=1`` swaps in Conv1d / 1-D pools for sequences ``(N, C, L)``; a 2-D
    input ``(N, L)`` is treated as one channel.

    Shapes: input ``(N, in_channels, input_size, input_size)`` (``dims=2``) or
    ``(N, in_channels, input_size)`` / ``(N, input_size)`` (``dims=1``); output ``(N, num_classes)`` logits.

    Raises:
        ValueError: ``dims`` is not 1 or 2, or ``input_size`` is below 15 (three 3/2 pools).
    """

    ddc_layers: tuple[str, ...] = ("linear1",)
    dropout_layers: tuple[str, ...] = ("linear1",)

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, input_size: int = 28, dims: int = 2, hidden: int = 64
    ):
        super().__init__()
        if dims not in (1, 2):
            raise ValueError(f"dims must be 1 or 2; got {dims!r}")
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        max_pool = nn.MaxPool2d if dims == 2 else nn.MaxPool1d
        avg_pool = nn.AvgPool2d if dims == 2 else nn.AvgPool1d
        final_size = _pooled(_pooled(_pooled(input_size)))
        if final_size < 1:
            raise ValueError(f"input_size must be at least 15 for SimpleCNN1 (three 3/2 pools); got {input_size}")
        self.dims = dims
        self.conv1 = conv(in_channels, 32, 5, padding=2)
        # Faithful to the authors' code: no ReLU after conv1, max-pooling follows directly.
        self.pool1 = max_pool(3, 2)
        self.conv2 = conv(32, 32, 5, padding=2)
        self.act2 = nn.ReLU()
        self.pool2 = avg_pool(3, 2)
        self.conv3 = conv(32, 64, 5, padding=2)
        self.act3 = nn.ReLU()
        self.pool3 = avg_pool(3, 2)
        self.flatten = nn.Flatten()
        self.linear1 = nn.Linear(64 * final_size**dims, hidden)
        self.act4 = nn.ReLU()
        self.linear2 = nn.Linear(hidden, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` (``dims=1``: ``(N, L)`` or ``(N, C, L)``) to ``(N, num_classes)`` logits.

        Raises:
            Nothing of its own; input of another shape raises the layers' ``RuntimeError``.
        """
        if self.dims == 1 and x.dim() == 2:
            x = x.unsqueeze(1)
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.act2(self.conv2(x)))
        x = self.pool3(self.act3(self.conv3(x)))
        return self.linear2(self.act4(self.linear1(self.flatten(x))))


class SimpleCNN2(nn.Module):
    """SimpleCNN2 after cuda-convnet's ``layers-conv-local-11pct`` (CIFAR-10).

    conv1 (64, k5, p2) -> ReLU -> MaxPool(3, 2) -> LRN -> conv2 (64, k5, p2) -> ReLU
    -> LRN -> MaxPool(3, 2) -> local3 (16, k3, p1) -> ReLU -> local4 (32, k3, p1)
    -> ReLU -> flatten -> linear1 (-> 128) -> ReLU -> linear2 (-> classes).

    LRN is PyTorch's cross-channel ``LocalResponseNorm(size=9, alpha=0.001,
    beta=0.75)`` (cuda-convnet's response-normalisation constants). linear1's
    in-features are 32*7*7 = 1568 for 32x32 inputs and 32*6*6 = 1152 for 28x28.
    Needs inputs of at least 7x7.

    Shapes: input ``(N, in_channels, input_size, input_size)``, output ``(N, num_classes)`` logits.

    Raises:
        ValueError: ``input_size`` is below 7 (two 3/2 pools).
    """

    ddc_layers: tuple[str, ...] = ("linear1",)
    dropout_layers: tuple[str, ...] = ("linear1",)

    def __init__(self, in_channels: int = 3, num_classes: int = 10, input_size: int = 32, hidden: int = 128):
        super().__init__()
        local_size = _pooled(_pooled(input_size))
        if local_size < 1:
            raise ValueError(f"input_size must be at least 7 for SimpleCNN2 (two 3/2 pools); got {input_size}")
        self.conv1 = nn.Conv2d(in_channels, 64, 5, padding=2)
        self.act1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(3, 2)
        self.norm1 = nn.LocalResponseNorm(9, alpha=0.001, beta=0.75)
        self.conv2 = nn.Conv2d(64, 64, 5, padding=2)
        self.act2 = nn.ReLU()
        self.norm2 = nn.LocalResponseNorm(9, alpha=0.001, beta=0.75)
        self.pool2 = nn.MaxPool2d(3, 2)
        self.local3 = LocallyConnected2d(64, 16, local_size, kernel_size=3, padding=1)
        self.act3 = nn.ReLU()
        self.local4 = LocallyConnected2d(16, 32, local_size, kernel_size=3, padding=1)
        self.act4 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.linear1 = nn.Linear(32 * local_size * local_size, hidden)
        self.act5 = nn.ReLU()
        self.linear2 = nn.Linear(hidden, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, input_size, input_size)`` to ``(N, num_classes)`` logits.

        Raises:
            Nothing of its own; input of another shape raises the layers' ``RuntimeError``.
        """
        x = self.norm1(self.pool1(self.act1(self.conv1(x))))
        x = self.pool2(self.norm2(self.act2(self.conv2(x))))
        x = self.act4(self.local4(self.act3(self.local3(x))))
        return self.linear2(self.act5(self.linear1(self.flatten(x))))


# --------------------------------------------------------------------------- large CNNs


class AlexNet(nn.Module):
    """torchvision-style AlexNet without built-in dropout.

    Inputs smaller than 224x224 are bilinearly upsampled to 224x224 inside
    ``forward``. features -> AdaptiveAvgPool2d((6, 6)) -> linear1 (9216 -> 4096)
    -> ReLU -> linear2 (4096 -> 4096) -> ReLU -> linear3 (4096 -> classes).
    Architecture of Krizhevsky et al. (2012) as torchvision defines it.

    Shapes: input ``(N, in_channels, H, W)``, output ``(N, num_classes)`` logits. Raises nothing of its own.
    """

    ddc_layers: tuple[str, ...] = ("linear1",)
    dropout_layers: tuple[str, ...] = ("linear1",)
    resize_to: int = 224

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.flatten = nn.Flatten()
        self.linear1 = nn.Linear(256 * 6 * 6, 4096)
        self.act1 = nn.ReLU()
        self.linear2 = nn.Linear(4096, 4096)
        self.act2 = nn.ReLU()
        self.linear3 = nn.Linear(4096, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, H, W)`` (upsampled to ``resize_to`` when smaller) to ``(N, num_classes)`` logits.

        Raises:
            Nothing of its own; input of another shape raises the layers' ``RuntimeError``.
        """
        if x.shape[-1] < self.resize_to or x.shape[-2] < self.resize_to:
            x = F.interpolate(x, size=(self.resize_to, self.resize_to), mode="bilinear", align_corners=False)
        x = self.flatten(self.avgpool(self.features(x)))
        return self.linear3(self.act2(self.linear2(self.act1(self.linear1(x)))))


#: VGG13 convolution widths; "M" is a 2x2 max-pool.
VGG13_CONFIG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG13BN(nn.Module):
    """VGG13 with BatchNorm for CIFAR-sized inputs, without built-in dropout.

    features (3x3 conv + BN + ReLU, five max-pools) -> flatten (512 for 32x32)
    -> linear1 (-> 512) -> ReLU -> linear2 (512 -> 512) -> ReLU -> linear3 (-> classes).
    Needs inputs of at least 32x32 (five 2x2 pools); 28x28 inputs are rejected.
    Configuration "B" of Simonyan & Zisserman (2015), with BatchNorm after each convolution.

    Shapes: input ``(N, in_channels, input_size, input_size)``, output ``(N, num_classes)`` logits.

    Raises:
        ValueError: ``input_size`` is below 32.
    """

    ddc_layers: tuple[str, ...] = ("linear1",)
    dropout_layers: tuple[str, ...] = ("linear1",)

    def __init__(self, num_classes: int = 10, in_channels: int = 3, input_size: int = 32):
        super().__init__()
        final_size = input_size // 32
        if final_size < 1:
            raise ValueError(f"input_size must be at least 32 for VGG13BN (five 2x2 pools); got {input_size}")
        layers: list[nn.Module] = []
        channels = in_channels
        for item in VGG13_CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.linear1 = nn.Linear(512 * final_size * final_size, 512)
        self.act1 = nn.ReLU()
        self.linear2 = nn.Linear(512, 512)
        self.act2 = nn.ReLU()
        self.linear3 = nn.Linear(512, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, input_size, input_size)`` to ``(N, num_classes)`` logits.

        Raises:
            Nothing of its own; input of another shape raises the layers' ``RuntimeError``.
        """
        x = self.flatten(self.features(x))
        return self.linear3(self.act2(self.linear2(self.act1(self.linear1(x)))))


# --------------------------------------------------------------------------- ResNets


class PadShortcut(nn.Module):
    """Option-A shortcut (He et al. 2016, section 3.3): subsample by ``stride`` and zero-pad new channels.

    Shapes: input ``(N, in_planes, H, W)``, output ``(N, planes, ceil(H / stride), ceil(W / stride))``.

    Raises:
        Nothing on construction (``planes < in_planes`` is not checked).
    """

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride = stride
        self.extra_channels = planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_planes, H, W)`` to ``(N, planes, ceil(H / stride), ceil(W / stride))``.

        Raises:
            Nothing of its own; input of another shape raises the layers' ``RuntimeError``.
        """
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers with a residual connection.

    ``shortcut="B"``: 1x1 conv + BN projection when the shape changes;
    ``shortcut="A"``: parameter-free subsample + zero-padding (:class:`PadShortcut`).
    The basic block of He et al. (2016, figure 2).

    Shapes: input ``(N, in_planes, H, W)``, output ``(N, planes, ceil(H / stride), ceil(W / stride))``.

    Raises:
        ValueError: ``shortcut`` is not 'A' or 'B'.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B"):
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B'; got {shortcut!r}")
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = PadShortcut(in_planes, planes, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_planes, H, W)`` to ``(N, planes, H / stride, W / stride)``.

        Raises:
            Nothing of its own; input of another shape raises the layers' ``RuntimeError``.
        """
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem (stride 1, no max-pool), BasicBlock stages, global pool, ``fc``.

    He et al. (2016, section 4.2): stage ``k`` has ``blocks_per_stage[k]``
    :class:`BasicBlock` s of ``widths[k]`` channels, the first of each later
    stage with stride 2. ``num_stages`` is read by experiments that select the
    last stage's convolutions.

    Shapes: input ``(N, in_channels, H, W)``, output ``(N, num_classes)`` logits.

    Raises:
        ValueError: ``shortcut`` is not 'A' or 'B'.
    """

    ddc_layers: tuple[str, ...] = ("fc",)
    dropout_layers: tuple[str, ...] = ("fc",)

    def __init__(
        self,
        widths: tuple[int, ...],
        blocks_per_stage: tuple[int, ...],
        shortcut: str,
        num_classes: int,
        in_channels: int,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        for stage, (planes, num_blocks) in enumerate(zip(widths, blocks_per_stage), start=1):
            stride = 1 if stage == 1 else 2
            blocks = []
            for block_index in range(num_blocks):
                blocks.append(BasicBlock(in_planes, planes, stride if block_index == 0 else 1, shortcut))
                in_planes = planes
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.num_stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, H, W)`` to ``(N, num_classes)`` logits.

        Raises:
            Nothing of its own; input of another shape raises the layers' ``RuntimeError``.
        """
        x = F.relu(self.bn1(self.conv1(x)))
        for stage in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{stage}")(x)
        return self.fc(self.flatten(self.avgpool(x)))


class ResNet18(CifarResNet):
    """ResNet-18 for 32x32 inputs (also 1x28x28): stages 64/128/256/512, 2 blocks each,
    option-B (projection) shortcuts; about 11.2M parameters for 10 classes.

    Raises:
        Nothing of its own.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__((64, 128, 256, 512), (2, 2, 2, 2), "B", num_classes, in_channels)


class ResNet20(CifarResNet):
    """ResNet-20 of He et al. (2016) for CIFAR (also 1x28x28): 3 stages x 3 blocks,
    16/32/64 channels, option-A (zero-padding) shortcuts; about 0.27M parameters.

    Raises:
        Nothing of its own.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__((16, 32, 64), (3, 3, 3), "A", num_classes, in_channels)


# --------------------------------------------------------------------------- Vision Transformer


class PatchEmbedding(nn.Module):
    """Cut ``(N, C, H, H)`` images into non-overlapping ``patch_size`` squares and map each
    flattened patch (``C * patch_size**2`` values) to ``dim`` with one ``nn.Linear`` named ``proj``.

    Output ``(N, (H // patch_size)**2, dim)``, patches in row-major order
    (Dosovitskiy et al. 2021, eq. 1).

    Raises:
        ValueError: ``patch_size`` does not divide ``input_size``; in ``forward``, the input is not
            ``(in_channels, input_size, input_size)``.
    """

    def __init__(self, in_channels: int, input_size: int, patch_size: int, dim: int):
        super().__init__()
        if patch_size < 1 or input_size % patch_size:
            raise ValueError(
                f"patch_size must divide the image size; got patch_size={patch_size} for {input_size}x{input_size} images"
            )
        self.in_channels, self.input_size, self.patch_size = in_channels, input_size, patch_size
        self.num_patches = (input_size // patch_size) ** 2
        self.proj = nn.Linear(in_channels * patch_size * patch_size, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` images to ``(N, patches, dim)`` patch embeddings.

        Raises:
            ValueError: ``(C, H, W)`` is not the size the layer was built for.
        """
        if x.shape[-3:] != (self.in_channels, self.input_size, self.input_size):
            raise ValueError(
                f"PatchEmbedding built for {self.in_channels}x{self.input_size}x{self.input_size} inputs; "
                f"got {tuple(x.shape[-3:])}"
            )
        patches = F.unfold(x, self.patch_size, stride=self.patch_size)  # (N, C*p*p, L)
        return self.proj(patches.transpose(1, 2))


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention with explicit projections: ``qkv`` (one ``nn.Linear(dim, 3*dim)``)
    and the output projection ``proj`` (``nn.Linear(dim, dim)``). The attention product is
    :func:`torch.nn.functional.scaled_dot_product_attention` (no attention dropout;
    Vaswani et al. 2017, eq. 1).

    Shapes: input and output ``(N, tokens, dim)``.

    Raises:
        ValueError: ``heads`` does not divide ``dim``.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if heads < 1 or dim % heads:
            raise ValueError(f"heads must divide dim; got heads={heads} for dim={dim}")
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, tokens, dim)`` to ``(N, tokens, dim)``.

        Raises:
            Nothing of its own; input of another shape raises the layers' ``RuntimeError``.
        """
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (N, heads, T, head_dim)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class FeedForward(nn.Module):
    """The transformer MLP: ``fc1`` (dim -> hidden) -> GELU -> ``fc2`` (hidden -> dim). Shapes: ``(N, tokens, dim)`` in and out.

    Raises:
        Nothing of its own (``nn.Linear`` checks the sizes).
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, tokens, dim)`` to ``(N, tokens, dim)``.

        Raises:
            Nothing of its own; input of another shape raises the layers' ``RuntimeError``.
        """
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))`` (Dosovitskiy et al. 2021, eqs. 2-3).

    Shapes: input and output ``(N, tokens, dim)``.

    Raises:
        ValueError: ``heads`` does not divide ``dim``.
    """

    def __init__(self, dim: int, heads: int, mlp_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, tokens, dim)`` to ``(N, tokens, dim)``.

        Raises:
            Nothing of its own; input of another shape raises the layers' ``RuntimeError``.
        """
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def vit_projection_layers(depth: int) -> tuple[str, ...]:
    """Qualified names of the attention (``qkv``, ``proj``) and MLP (``fc1``, ``fc2``) projections
    of a :class:`VisionTransformer` with ``depth`` blocks, in model order.

    Raises:
        Nothing (a ``depth`` below 1 gives no names).
    """
    return tuple(
        f"blocks.{index}.{name}" for index in range(depth) for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    )


class VisionTransformer(nn.Module):
    """A small Vision Transformer (Dosovitskiy et al. 2021) for 28x28 / 32x32 images.

    ``patch_embed`` (a Linear over flattened ``patch_size`` patches) -> prepend a learned
    class token -> add a learned position embedding -> ``depth`` pre-norm
    :class:`TransformerBlock` s (``blocks.K.attn.qkv``, ``blocks.K.attn.proj``,
    ``blocks.K.mlp.fc1``, ``blocks.K.mlp.fc2``) -> LayerNorm ``norm`` of the class
    token -> ``head`` (Linear to the classes). No dropout of its own.

    Defaults (``dim=64``, ``depth=4``, ``heads=4``, ``mlp_hidden=128``, ``patch_size=4``):
    49 patches + the class token for 1x28x28, about 0.14M parameters.
    ``ddc_layers`` / ``dropout_layers`` are every attention and MLP projection
    (:func:`vit_projection_layers`); the class attribute names those of the default depth.

    Shapes: input ``(N, in_channels, input_size, input_size)``, output ``(N, num_classes)`` logits.

    Raises:
        ValueError: ``dim``, ``depth`` or ``mlp_hidden`` is not a positive integer, ``heads`` does not
            divide ``dim``, or ``patch_size`` does not divide ``input_size``.
    """

    DEFAULT_DEPTH = 4
    ddc_layers: tuple[str, ...] = vit_projection_layers(DEFAULT_DEPTH)
    dropout_layers: tuple[str, ...] = vit_projection_layers(DEFAULT_DEPTH)

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int = 28,
        patch_size: int = 4,
        dim: int = 64,
        depth: int = DEFAULT_DEPTH,
        heads: int = 4,
        mlp_hidden: int = 128,
    ):
        super().__init__()
        for name, value in (("dim", dim), ("depth", depth), ("mlp_hidden", mlp_hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        self.patch_embed = PatchEmbedding(in_channels, input_size, patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, dim))
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.depth = depth
        self.ddc_layers = self.dropout_layers = vit_projection_layers(depth)
        init_weights(self)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, H)`` images to ``(N, num_classes)`` logits (the class token's).

        Raises:
            Nothing of its own; input of another shape raises the layers' ``RuntimeError``.
        """
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens[:, 0]))


# --------------------------------------------------------------------------- registry

MODELS: dict[str, type[nn.Module]] = {
    "linreg2d": LinearRegression2D,
    "mlp": MLP,
    "simplecnn1": SimpleCNN1,
    "simplecnn2": SimpleCNN2,
    "alexnet": AlexNet,
    "vgg13bn": VGG13BN,
    "resnet18": ResNet18,
    "resnet20": ResNet20,
    "vit": VisionTransformer,
}


def _image_shape(model: str, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(channels, size) of a square image shape (C, H, H), or a ValueError naming the model."""
    if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
        raise ValueError(
            f"model {model!r} needs a square image input_shape (C, H, H), e.g. (1, 28, 28) or (3, 32, 32); "
            f"got {input_shape}"
        )
    return input_shape[0], input_shape[1]


def _classification_classes(model: str, num_classes: int) -> int:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 for the classification model {model!r}; got {num_classes}")
    return num_classes


def _build_linreg2d(shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if shape != (2,):
        raise ValueError(f"model 'linreg2d' needs input_shape (2,); got {shape}")
    if num_classes not in (0, 1):
        raise ValueError(f"num_classes must be 0 or 1 (one regression output) for model 'linreg2d'; got {num_classes}")
    return LinearRegression2D()


def _build_mlp(shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MLP(math.prod(shape), num_classes=_classification_classes("mlp", num_classes))


def _build_simplecnn1(shape: tuple[int, ...], num_classes: int) -> nn.Module:
    num_classes = _classification_classes("simplecnn1", num_classes)
    if len(shape) == 1:
        return SimpleCNN1(1, num_classes, input_size=shape[0], dims=1)
    if len(shape) == 2:
        return SimpleCNN1(shape[0], num_classes, input_size=shape[1], dims=1)
    channels, size = _image_shape("simplecnn1", shape)
    return SimpleCNN1(channels, num_classes, input_size=size, dims=2)


def _build_simplecnn2(shape: tuple[int, ...], num_classes: int) -> nn.Module:
    channels, size = _image_shape("simplecnn2", shape)
    return SimpleCNN2(channels, _classification_classes("simplecnn2", num_classes), input_size=size)


def _build_alexnet(shape: tuple[int, ...], num_classes: int) -> nn.Module:
    channels, _ = _image_shape("alexnet", shape)
    return AlexNet(_classification_classes("alexnet", num_classes), in_channels=channels)


def _build_vgg13bn(shape: tuple[int, ...], num_classes: int) -> nn.Module:
    channels, size = _image_shape("vgg13bn", shape)
    return VGG13BN(_classification_classes("vgg13bn", num_classes), in_channels=channels, input_size=size)


def _build_resnet(model_class: type[nn.Module], name: str):
    def build_resnet(shape: tuple[int, ...], num_classes: int) -> nn.Module:
        channels, _ = _image_shape(name, shape)
        return model_class(_classification_classes(name, num_classes), in_channels=channels)

    return build_resnet


def _build_vit(shape: tuple[int, ...], num_classes: int) -> nn.Module:
    channels, size = _image_shape("vit", shape)
    if size % 4:
        raise ValueError(f"model 'vit' cuts 4x4 patches, so the image size must be a multiple of 4; got {shape}")
    return VisionTransformer(_classification_classes("vit", num_classes), in_channels=channels, input_size=size)


_BUILDERS = {
    "linreg2d": _build_linreg2d,
    "mlp": _build_mlp,
    "simplecnn1": _build_simplecnn1,
    "simplecnn2": _build_simplecnn2,
    "alexnet": _build_alexnet,
    "vgg13bn": _build_vgg13bn,
    "resnet18": _build_resnet(ResNet18, "resnet18"),
    "resnet20": _build_resnet(ResNet20, "resnet20"),
    "vit": _build_vit,
}


def build(name: str, *, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build model ``name`` for per-example ``input_shape`` and ``num_classes`` outputs.

    Channels, spatial size and the 1-D SimpleCNN1 variant are chosen from
    ``input_shape`` ((C, H, W) images; (1, 40) or (40,) for MNIST-1D; (2,) for
    ``linreg2d``, which takes ``num_classes`` 0 or 1).

    Raises:
        ValueError: an unknown name (the message lists :data:`MODELS`), an
            ``input_shape`` that is not positive integers or that the model cannot
            take, or a ``num_classes`` that is not an integer the model accepts.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}; got {name!r}")
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise ValueError(f"input_shape must be a tuple of positive integers; got {input_shape!r}") from None
    if not shape or any(d < 1 for d in shape):
        raise ValueError(f"input_shape must be a tuple of positive integers; got {input_shape!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise ValueError(f"num_classes must be an integer; got {num_classes!r}")
    return _BUILDERS[key](shape, num_classes)
