"""Model zoo: the PyTorch networks every level of crosslevel is exercised on.

Why our own definitions: torchvision does not import beside the pinned torch, and the
optimizing levels need models whose ONNX export stays inside a small operator set
(Conv, BatchNormalization, Relu, Clip, Add, MaxPool, AveragePool, GlobalAveragePool,
Flatten, Gemm, Concat, plus MatMul, Softmax, LayerNormalization, Transpose, Reshape and
ReduceMean for the transformer). Every layer used here maps onto that set.

All image-like models are NCHW. Time-series models use 2-D layers on a C x 1 x T input
with (1, k) kernels, because the IR has only 2-D convolutions. Models return logits:
the MLPerf Tiny references end in a softmax, which is left to the loss or the caller.

The MLPerf Tiny models (ds_cnn, resnet8, mobilenet_v1_025, fc_autoencoder) follow the
reference Keras code of mlcommons/tiny; their shapes, MACs and (BN-folded) parameter
counts equal those of the reference .tflite files. Padding differs only where TF's
asymmetric "same" padding has no symmetric PyTorch equivalent: the symmetric padding
chosen here gives the same output shapes, MACs and parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

Shape = tuple[int, ...]


# --------------------------------------------------------------------------- helpers


def conv_bn(
    in_ch: int,
    out_ch: int,
    kernel: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | None = None,
    groups: int = 1,
    act: str | None = "relu",
) -> nn.Sequential:
    """Conv2d (no bias, BN follows) + BatchNorm2d + optional ReLU/ReLU6.

    One helper so every conv in the zoo has the same Conv-BN-Act pattern that the graph
    level folds and fuses. Default padding keeps "same" spatial size at stride 1.
    """
    k = (kernel, kernel) if isinstance(kernel, int) else kernel
    pad = (k[0] // 2, k[1] // 2) if padding is None else padding
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, k, stride=stride, padding=pad, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if act == "relu":
        layers.append(nn.ReLU(inplace=True))
    elif act == "relu6":
        layers.append(nn.ReLU6(inplace=True))
    elif act is not None:
        raise ValueError(f"unknown activation {act!r}")
    return nn.Sequential(*layers)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of `divisor` (MobileNet convention, never < 90 %)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


class ClassifierHead(nn.Sequential):
    """Global average pool + flatten + (dropout) + linear: the head of every CNN here."""

    def __init__(self, in_ch: int, num_classes: int, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(in_ch, num_classes))
        super().__init__(*layers)


# --------------------------------------------------------------------------- MLPerf Tiny


class DSCNN(nn.Module):
    """MLPerf Tiny keyword-spotting DS-CNN (input 1x49x10 MFCC, 12 classes).

    Reference: conv 64 10x4 stride 2 + BN + ReLU, dropout 0.2, four depthwise-separable
    blocks of 64 channels (dw 3x3 + BN + ReLU, pw 1x1 + BN + ReLU), dropout 0.4, average
    pool over the whole 25x5 map, dense 12. Padding (5, 1) gives TF's 25x5 output.
    """

    def __init__(self, num_classes: int = 12, filters: int = 64, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = conv_bn(in_channels, filters, (10, 4), stride=2, padding=(5, 1))
        self.drop_in = nn.Dropout(0.2)
        blocks: list[nn.Module] = []
        for _ in range(4):
            blocks.append(conv_bn(filters, filters, 3, groups=filters))
            blocks.append(conv_bn(filters, filters, 1))
        self.blocks = nn.Sequential(*blocks)
        self.head = ClassifierHead(filters, num_classes, dropout=0.4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.drop_in(self.stem(x))))


class ResidualStack(nn.Module):
    """One ResNet-8 stack: two 3x3 convs, a shortcut (identity or 1x1 conv), add, ReLU.

    The reference's 1x1 shortcut conv has a bias and no BN, kept as is.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(in_ch, out_ch, 3, stride=stride)
        self.conv2 = conv_bn(out_ch, out_ch, 3, act=None)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.shortcut(x) + self.conv2(self.conv1(x)))


class ResNet8(nn.Module):
    """MLPerf Tiny image-classification ResNet-8 for CIFAR-10 (3x32x32, 10 classes)."""

    def __init__(self, num_classes: int = 10, filters: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        f1, f2, f3 = filters
        self.stem = conv_bn(3, f1, 3)
        self.stacks = nn.Sequential(
            ResidualStack(f1, f1, 1), ResidualStack(f1, f2, 2), ResidualStack(f2, f3, 2)
        )
        self.head = ClassifierHead(f3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stacks(self.stem(x)))


# (channels at alpha=1, stride) of the 13 depthwise-separable blocks of MobileNetV1.
_MOBILENET_V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip


class MobileNetV1(nn.Module):
    """MobileNetV1 (MLPerf Tiny VWW reference: alpha 0.25, 96x96x3, 2 classes, ReLU)."""

    def __init__(self, num_classes: int = 2, alpha: float = 0.25) -> None:
        super().__init__()
        ch = max(1, int(32 * alpha))
        layers: list[nn.Module] = [conv_bn(3, ch, 3, stride=2)]
        for base, stride in _MOBILENET_V1_BLOCKS:
            out = max(1, int(base * alpha))
            layers.append(conv_bn(ch, ch, 3, stride=stride, groups=ch))
            layers.append(conv_bn(ch, out, 1))
            ch = out
        self.features = nn.Sequential(*layers)
        self.head = ClassifierHead(ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class FCAutoencoder(nn.Module):
    """MLPerf Tiny anomaly-detection (ToyCar) autoencoder: 640-128x4-8-128x4-640.

    Every hidden Dense, the 8-wide bottleneck included, is followed by BN and ReLU as
    in the reference; the output layer is linear. Input and output are flat (N, 640).
    """

    def __init__(self, input_dim: int = 640, hidden: int = 128, bottleneck: int = 8) -> None:
        super().__init__()
        widths = [input_dim, hidden, hidden, hidden, hidden, bottleneck]
        widths += [hidden, hidden, hidden, hidden]
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(w_in, w_out), nn.BatchNorm1d(w_out), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(hidden, input_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# --------------------------------------------------------------------------- MobileNetV2 family


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand + ReLU6, kxk depthwise + ReLU6, 1x1 project, skip.

    The kernel size is a parameter so MCUNet-style searched nets (3/5/7) reuse it.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int, kernel: int = 3) -> None:
        super().__init__()
        mid = in_ch * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(in_ch, mid, 1, act="relu6"))
        layers.append(conv_bn(mid, mid, kernel, stride=stride, groups=mid, act="relu6"))
        layers.append(conv_bn(mid, out_ch, 1, act=None))
        self.conv = nn.Sequential(*layers)
        self.use_skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_skip else y


# (expand t, channels c, repeats n, first stride s) of MobileNetV2 (Sandler et al. 2018).
_MOBILENET_V2_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)  # fmt: skip


class MobileNetV2(nn.Module):
    """MobileNetV2 with a width multiplier; any input resolution (global pool head).

    Defaults (0.35, 96x96, 2 classes) are the usual TinyML person-detection size.
    """

    def __init__(self, num_classes: int = 2, width_mult: float = 0.35) -> None:
        super().__init__()
        ch = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [conv_bn(3, ch, 3, stride=2, act="relu6")]
        for t, c, n, s in _MOBILENET_V2_SETTING:
            out = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(ch, out, s if i == 0 else 1, t))
                ch = out
        layers.append(conv_bn(ch, last, 1, act="relu6"))
        self.features = nn.Sequential(*layers)
        self.head = ClassifierHead(last, num_classes, dropout=0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# (expand, kernel, channels, stride) per block, in the manner of the MCUNet searched
# backbones (mixed 3/5/7 kernels, expansion 1..6, narrow early stages for a small SRAM peak).
_MCUNET_BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (1, 3, 8, 1),
    (4, 7, 16, 2), (3, 3, 16, 1),
    (4, 5, 24, 2), (3, 5, 24, 1), (5, 3, 24, 1),
    (5, 7, 40, 2), (4, 3, 40, 1),
    (5, 5, 48, 1), (4, 3, 48, 1),
    (5, 7, 96, 2), (3, 5, 96, 1),
    (6, 3, 160, 1),
)  # fmt: skip


class MCUNetV2(nn.Module):
    """MCUNet-style MobileNetV2 variant: per-block kernel sizes and expansion ratios.

    Why: searched MCU backbones have irregular per-block costs (a 7x7 expand-5 block next
    to a 3x3 expand-3 one), which is what patch-based scheduling and per-layer kernel
    choice must cope with; plain MobileNetV2 is too uniform to show it.
    """

    def __init__(self, num_classes: int = 2, width_mult: float = 1.0) -> None:
        super().__init__()
        ch = make_divisible(16 * width_mult)
        layers: list[nn.Module] = [conv_bn(3, ch, 3, stride=2, act="relu6")]
        for expand, kernel, c, stride in _MCUNET_BLOCKS:
            out = make_divisible(c * width_mult)
            layers.append(InvertedResidual(ch, out, stride, expand, kernel))
            ch = out
        self.features = nn.Sequential(*layers)
        self.head = ClassifierHead(ch, num_classes, dropout=0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# --------------------------------------------------------------------------- small task CNNs


class IMUCNN(nn.Module):
    """1-D CNN for IMU activity recognition, written with 2-D layers on C x 1 x T input.

    BasicMotions: 6 channels (3-axis accelerometer + gyroscope) x 100 steps, 4 classes.
    """

    def __init__(self, num_classes: int = 4, in_channels: int = 6, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            conv_bn(in_channels, w, (1, 7)),
            nn.MaxPool2d((1, 2)),
            conv_bn(w, 2 * w, (1, 5)),
            nn.MaxPool2d((1, 2)),
            conv_bn(2 * w, 4 * w, (1, 3)),
        )
        self.head = ClassifierHead(4 * w, num_classes, dropout=0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MNIST1DCNN(nn.Module):
    """CNN for mnist1d (1 x 1 x 40, 10 classes): three strided (1, k) convs, flatten, FC.

    Flatten rather than global pooling: the digit's shape along time is the signal.
    """

    def __init__(self, num_classes: int = 10, width: int = 32, length: int = 40) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(1, width, (1, 5), stride=(1, 2)),
            conv_bn(width, width, (1, 3), stride=(1, 2)),
            conv_bn(width, width, (1, 3), stride=(1, 2)),
        )
        steps = length
        for _ in range(3):
            steps = (steps - 1) // 2 + 1
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * steps, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DigitsCNN(nn.Module):
    """Small CNN for scikit-learn digits (1x8x8, 10 classes).

    Sized on purpose: conv 16 and conv 32 at 8x8 keep 16x8x8 + 32x8x8 values live at
    once (3 KiB even in int8), so the full-width model does not fit a 2 KiB activation
    budget and memory-level or width knobs must work to make it fit; it still trains to
    > 90 % in a few seconds on a CPU.
    """

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            conv_bn(1, w, 3),
            conv_bn(w, 2 * w, 3),
            nn.MaxPool2d(2),
            conv_bn(2 * w, 4 * w, 3),
        )
        self.head = ClassifierHead(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# --------------------------------------------------------------------------- irregular wiring


class InceptionCell(nn.Module):
    """Four parallel branches joined by concatenation, plus a residual add when possible.

    Branch widths are deliberately unequal (a wide-then-narrow branch beside a narrow
    wide-output branch), so the order in which branches run changes how many branch
    outputs are held while another branch is at its own peak: the memory level's
    operator reordering has something to find.
    """

    def __init__(self, in_ch: int, widths: Sequence[int]) -> None:
        super().__init__()
        b1, b2_mid, b2, b3_mid, b3, b4 = widths
        self.branches = nn.ModuleList(
            [
                conv_bn(in_ch, b1, 1),
                nn.Sequential(conv_bn(in_ch, b2_mid, 1), conv_bn(b2_mid, b2, 3)),
                nn.Sequential(
                    conv_bn(in_ch, b3_mid, 1), conv_bn(b3_mid, b3, 3), conv_bn(b3, b3, 3)
                ),
                nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), conv_bn(in_ch, b4, 1)),
            ]
        )
        self.out_channels = b1 + b2 + b3 + b4
        self.residual = self.out_channels == in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([branch(x) for branch in self.branches], dim=1)
        return x + y if self.residual else y


class InceptionCells(nn.Module):
    """Inception-style irregular network for 3x32x32 inputs (CIFAR-10 sized)."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(conv_bn(3, w, 3), nn.MaxPool2d(2))
        cell_a = (w, 3 * w, w, w // 2, w, w)  # out 4w
        cell_b = (2 * w, 6 * w, 2 * w, w, 2 * w, 2 * w)  # out 8w
        self.cells = nn.Sequential(
            InceptionCell(w, cell_a),
            InceptionCell(4 * w, cell_a),
            nn.MaxPool2d(2),
            InceptionCell(4 * w, cell_b),
            InceptionCell(8 * w, cell_b),
        )
        self.head = ClassifierHead(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.cells(self.stem(x)))


# --------------------------------------------------------------------------- transformer


class Attention(nn.Module):
    """Multi-head self-attention from Linear, Reshape, Transpose, MatMul and Softmax only.

    The 1/sqrt(head_dim) scale is folded into the query projection (its initial weights
    are scaled), which spans exactly the same functions and keeps Mul out of the graph.
    Token count is fixed at construction so every Reshape has a constant target shape.
    """

    def __init__(self, dim: int, heads: int, tokens: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"d_model {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim, self.tokens = heads, dim // heads, tokens
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        with torch.no_grad():
            self.q.weight.mul_(self.head_dim**-0.5)
            self.q.bias.mul_(self.head_dim**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, h, d = self.tokens, self.heads, self.head_dim
        q = self.q(x).reshape(-1, t, h, d).transpose(1, 2)  # B h T d
        k = self.k(x).reshape(-1, t, h, d).permute(0, 2, 3, 1)  # B h d T
        v = self.v(x).reshape(-1, t, h, d).transpose(1, 2)  # B h T d
        attn = torch.softmax(torch.matmul(q, k), dim=-1)
        y = torch.matmul(attn, v).transpose(1, 2).reshape(-1, t, h * d)
        return self.out(y)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm encoder block: x + attn(ln(x)), then x + ffn(ln(x)) with ReLU."""

    def __init__(self, dim: int, heads: int, tokens: int, ff_mult: int = 2) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, tokens)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ff_mult * dim), nn.ReLU(), nn.Linear(ff_mult * dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class TinyTransformer(nn.Module):
    """Small transformer for KWS inputs: 1x49x10 MFCC -> 49 tokens of 10 -> d_model.

    Learned positional embedding, pre-LN blocks, mean pooling over tokens, linear head.
    Exports to ONNX opset 17 (dynamo=False) as MatMul/Add/Softmax/LayerNormalization/
    Relu/Transpose/Reshape/ReduceMean/Gemm with static shapes.
    """

    def __init__(
        self,
        num_classes: int = 12,
        tokens: int = 49,
        features: int = 10,
        d_model: int = 64,
        heads: int = 4,
        layers: int = 2,
    ) -> None:
        super().__init__()
        self.tokens, self.features = tokens, features
        self.embed = nn.Linear(features, d_model)
        self.pos = nn.Parameter(torch.randn(1, tokens, d_model) * 0.02)
        self.blocks = nn.Sequential(
            *[TransformerBlock(d_model, heads, tokens) for _ in range(layers)]
        )
        self.norm = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x.reshape(-1, self.tokens, self.features)) + self.pos
        x = self.norm(self.blocks(x))
        return self.fc(x.mean(dim=1))


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: how to build it and what it consumes and produces.

    `input_shape` excludes the batch dimension and is the default one; builders taking a
    `resolution` kwarg change its last two entries (see `input_shape_for`).
    `num_outputs` is the class count of classifiers and the feature count of the
    autoencoder. `dataset` names the offline data set of `crosslevel.model.datasets`
    the model is meant for, or None when no offline data exists.
    """

    name: str
    builder: Callable[..., nn.Module]
    input_shape: Shape
    num_outputs: int
    dataset: str | None
    description: str

    def input_shape_for(self, **kwargs: object) -> Shape:
        """Input shape of `build(name, **kwargs)`: honours `resolution` and `input_dim`."""
        shape = self.input_shape
        res = kwargs.get("resolution")
        if isinstance(res, int):
            shape = (*shape[:-2], res, res)
        dim = kwargs.get("input_dim")
        if isinstance(dim, int):
            shape = (dim,)
        return shape


def _with_resolution(cls: Callable[..., nn.Module], default: int = 96) -> Callable[..., nn.Module]:
    """Accept (and check) a `resolution` kwarg for fully convolutional models.

    The network itself is resolution-agnostic (global pooling head); the kwarg exists so
    callers state the input size in one place and `ZooEntry.input_shape_for` follows it.
    """

    def builder(resolution: int = default, **kwargs: object) -> nn.Module:
        if resolution < 32 or resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8 and >= 32, got {resolution}")
        return cls(**kwargs)

    return builder


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry("ds_cnn", DSCNN, (1, 49, 10), 12, None,
                 "MLPerf Tiny KWS DS-CNN, 64 filters, 12 keywords"),
        ZooEntry("resnet8", ResNet8, (3, 32, 32), 10, None,
                 "MLPerf Tiny ResNet-8 for CIFAR-10"),
        ZooEntry("mobilenet_v1_025", _with_resolution(MobileNetV1), (3, 96, 96), 2, None,
                 "MLPerf Tiny VWW MobileNetV1 alpha 0.25 at 96x96"),
        ZooEntry("fc_autoencoder", FCAutoencoder, (640,), 640, None,
                 "MLPerf Tiny anomaly-detection (ToyCar) FC autoencoder"),
        ZooEntry("mobilenet_v2", _with_resolution(MobileNetV2), (3, 96, 96), 2, None,
                 "MobileNetV2 with width_mult (default 0.35) and resolution kwargs"),
        ZooEntry("mcunet_v2", _with_resolution(MCUNetV2, 64), (3, 64, 64), 2, None,
                 "MCUNet-style MobileNetV2 with mixed 3/5/7 kernels and expansions"),
        ZooEntry("imu_cnn", IMUCNN, (6, 1, 100), 4, "basic_motions",
                 "CNN over time for BasicMotions IMU activity recognition"),
        ZooEntry("mnist1d_cnn", MNIST1DCNN, (1, 1, 40), 10, "mnist1d",
                 "strided CNN over time for mnist1d"),
        ZooEntry("digits_cnn", DigitsCNN, (1, 8, 8), 10, "digits",
                 "small CNN for scikit-learn digits; over 2 KiB of activations at full width"),
        ZooEntry("inception_cells", InceptionCells, (3, 32, 32), 10, None,
                 "Inception-style cells: parallel branches, concat and add, order-sensitive"),
        ZooEntry("tiny_transformer", TinyTransformer, (1, 49, 10), 12, None,
                 "2-layer transformer over 49 MFCC frames for KWS"),
    )
}  # fmt: skip


def list_models() -> list[str]:
    """Names of the zoo models, in registry order."""
    return list(ZOO)


def build(name: str, **kwargs: object) -> nn.Module:
    """Build zoo model `name` (untrained, train mode) with builder kwargs.

    Raises ValueError naming the known models when `name` is unknown.
    """
    entry = ZOO.get(name)
    if entry is None:
        raise ValueError(f"unknown zoo model {name!r}; known models: {', '.join(ZOO)}")
    return entry.builder(**kwargs)
