"""MobileNetV2-style reference models: equivariant (C_N / D_N, e2cnn) and conventional.

Inverted residual block (Sandler et al. 2018), made equivariant as in the PCam paper:
1x1 expand R2Conv -> InnerBatchNorm -> ReLU -> field-wise equivariant depthwise R2Conv
(``groups`` = number of fields: each regular field maps to itself) -> BN -> ReLU ->
1x1 project R2Conv -> BN, plus the residual add when shapes match. ReLU6 is offered as a
``clamp(0, 6)`` in the forward (e2cnn has no ReLU6 module). Group pooling before a torch
Linear head makes the logits invariant. Inputs of odd size 8k+1 (33, 65) keep the three
stride-2 stages aligned, so 90-degree rotations act exactly.

``imbalance`` (decades) spreads the BN gammas over orders of magnitude across fields
before the BN statistics settle, the range pathology of trained MobileNetV2 that
per-tensor INT8 cannot survive without equalization.
"""

from __future__ import annotations

import torch
from torch import nn

from eqdeploy.adapters import e2cnn_compat

e2cnn_compat.install()

from e2cnn import gspaces  # noqa: E402
from e2cnn import nn as enn  # noqa: E402

# (expansion t, output fields (before width), stride) per inverted residual block
BLOCKS = ((1, 2, 1), (3, 3, 2), (3, 3, 1), (3, 4, 2), (3, 4, 1))
STEM_FIELDS = 2
LAST_FIELDS = 6
EXACT_SIZES = (33, 65)


def _gspace(group: str):
    kind, n = group[0].upper(), int(group[1:])
    return gspaces.Rot2dOnR2(n) if kind == "C" else gspaces.FlipRot2dOnR2(n)


def _act(x, relu6: bool):
    if relu6:
        return enn.GeometricTensor(x.tensor.clamp(0.0, 6.0), x.type)
    return enn.GeometricTensor(torch.relu(x.tensor), x.type)


class EqInvertedResidual(nn.Module):
    """Equivariant inverted residual block on regular fields."""

    def __init__(self, gs, fields_in: int, fields_out: int, t: int, stride: int,
                 relu6: bool = False) -> None:
        super().__init__()
        reg = gs.regular_repr
        fin = enn.FieldType(gs, fields_in * [reg])
        hidden = enn.FieldType(gs, fields_in * t * [reg])
        fout = enn.FieldType(gs, fields_out * [reg])
        self.relu6 = relu6
        self.expand = None
        if t != 1:
            self.expand = enn.R2Conv(fin, hidden, 1, bias=False)
            self.bn1 = enn.InnerBatchNorm(hidden)
        self.dw = enn.R2Conv(hidden, hidden, 3, padding=1, stride=stride,
                             groups=fields_in * t, bias=False)
        self.bn2 = enn.InnerBatchNorm(hidden)
        self.project = enn.R2Conv(hidden, fout, 1, bias=False)
        self.bn3 = enn.InnerBatchNorm(fout)
        self.residual = stride == 1 and fields_in == fields_out

    def forward(self, x):
        y = x
        if self.expand is not None:
            y = _act(self.bn1(self.expand(y)), self.relu6)
        y = _act(self.bn2(self.dw(y)), self.relu6)
        y = self.bn3(self.project(y))
        return x + y if self.residual else y


class EqMobileNetV2(nn.Module):
    """Small equivariant MobileNetV2 for ``group`` (C4, C8, C12, D4, ...), invariant logits."""

    def __init__(self, group: str = "C8", channels: int = 1, classes: int = 10,
                 width: float = 1.0, relu6: bool = False) -> None:
        super().__init__()
        gs = _gspace(group)
        reg = gs.regular_repr
        w = lambda f: max(1, round(f * width))  # noqa: E731
        self.relu6 = relu6
        self.input_type = enn.FieldType(gs, channels * [gs.trivial_repr])
        stem = enn.FieldType(gs, w(STEM_FIELDS) * [reg])
        self.stem = enn.R2Conv(self.input_type, stem, 3, padding=1, stride=2, bias=False)
        self.stem_bn = enn.InnerBatchNorm(stem)
        blocks, fields = [], w(STEM_FIELDS)
        for t, f, s in BLOCKS:
            blocks.append(EqInvertedResidual(gs, fields, w(f), t, s, relu6))
            fields = w(f)
        self.blocks = nn.ModuleList(blocks)
        last = enn.FieldType(gs, w(LAST_FIELDS) * [reg])
        self.last = enn.R2Conv(enn.FieldType(gs, fields * [reg]), last, 1, bias=False)
        self.last_bn = enn.InnerBatchNorm(last)
        self.gpool = enn.GroupPooling(last)
        self.head = nn.Linear(w(LAST_FIELDS), classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _act(self.stem_bn(self.stem(enn.GeometricTensor(x, self.input_type))), self.relu6)
        for b in self.blocks:
            x = b(x)
        x = _act(self.last_bn(self.last(x)), self.relu6)
        x = self.gpool(x).tensor.mean(dim=(2, 3))
        return self.head(x)


class InvertedResidual(nn.Module):
    """Conventional inverted residual block (depthwise conv: groups = channels)."""

    def __init__(self, cin: int, cout: int, t: int, stride: int, relu6: bool = False) -> None:
        super().__init__()
        hidden = cin * t
        act = nn.ReLU6 if relu6 else nn.ReLU
        layers: list[nn.Module] = []
        if t != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                   nn.BatchNorm2d(hidden), act(),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """Conventional MobileNetV2-style counterpart (``channels_per_field`` x the fields)."""

    def __init__(self, channels: int = 1, classes: int = 10, width: float = 1.0,
                 channels_per_field: int = 8, relu6: bool = False) -> None:
        super().__init__()
        c = lambda f: max(1, round(f * width)) * channels_per_field  # noqa: E731
        act = nn.ReLU6 if relu6 else nn.ReLU
        layers: list[nn.Module] = [nn.Conv2d(channels, c(STEM_FIELDS), 3, 2, 1, bias=False),
                                   nn.BatchNorm2d(c(STEM_FIELDS)), act()]
        cin = c(STEM_FIELDS)
        for t, f, s in BLOCKS:
            layers.append(InvertedResidual(cin, c(f), t, s, relu6))
            cin = c(f)
        layers += [nn.Conv2d(cin, c(LAST_FIELDS), 1, bias=False), nn.BatchNorm2d(c(LAST_FIELDS)),
                   act()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c(LAST_FIELDS), classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def settle(model: nn.Module, shape: tuple[int, ...], imbalance: float = 0.0, batches: int = 4,
           seed: int = 0, high_bias: float = 0.25,
           high_bias_range: tuple[float, float] = (2.0, 5.0)) -> nn.Module:
    """Give BN layers trained-looking statistics, then eval().

    ``imbalance`` > 0 spreads each BN's gammas over ``10**U(-imbalance, imbalance)`` per field
    (per channel for plain BN); set before the statistics settle, so the next BN
    renormalizes it and consecutive folded layers get reciprocal per-field ranges, as in
    trained nets. A ``high_bias`` fraction of fields gets ``beta = gamma * U(a, b)``
    (``high_bias_range``, default (2, 5); ReLU
    inputs that are nearly always positive: what high-bias absorption is for). The head is
    centred on the settle batches so that the argmax varies with the input.
    """
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.3, 0.5, generator=gen)
                high = torch.rand(m.bias.shape, generator=gen) < high_bias
                lo, hi = high_bias_range
                m.bias.copy_(torch.where(high, m.weight * (lo + (hi - lo) * torch.rand(
                    m.bias.shape, generator=gen)), m.bias))
                if imbalance:
                    spread = 10 ** ((torch.rand(m.weight.shape, generator=gen) * 2 - 1)
                                    * imbalance)
                    m.weight.mul_(spread)
                    m.bias.mul_(spread)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(*shape, generator=gen) + 0.5)
    model.eval()
    feats = []
    hook = model.head.register_forward_pre_hook(lambda mod, args: feats.append(args[0]))
    with torch.no_grad():
        model(torch.randn(*shape, generator=gen) + 0.5)
        hook.remove()
        f = feats[0]
        w = model.head.weight / (f.std(0).mean() + 1e-12)
        model.head.weight.copy_(w)
        model.head.bias.copy_(-(f.mean(0) @ w.T))
    return model


def eq_mobilenet(group: str = "C8", size: int = 33, width: float = 1.0, relu6: bool = False,
                 imbalance: float = 0.0, seed: int = 0) -> EqMobileNetV2:
    """A settled equivariant MobileNetV2 for ``group`` at input ``size``."""
    torch.manual_seed(seed)
    model = EqMobileNetV2(group, width=width, relu6=relu6)
    return settle(model, (8, 1, size, size), imbalance, seed=seed)


def mobilenet(size: int = 33, width: float = 1.0, relu6: bool = False, imbalance: float = 0.0,
              seed: int = 0) -> MobileNetV2:
    """A settled conventional MobileNetV2 counterpart."""
    torch.manual_seed(seed)
    return settle(MobileNetV2(width=width, relu6=relu6), (8, 1, size, size), imbalance,
                  seed=seed)


def c4_mobilenet() -> EqMobileNetV2:
    return eq_mobilenet("C4")


def c8_mobilenet() -> EqMobileNetV2:
    return eq_mobilenet("C8")


def c12_mobilenet() -> EqMobileNetV2:
    return eq_mobilenet("C12")


def c16_mobilenet() -> EqMobileNetV2:
    return eq_mobilenet("C16")


def export_conventional(model: nn.Module, example: torch.Tensor):
    """PlainModel of a plain-torch model with the trivial group C1 (every channel a field).

    Stand-in until the plain adapter exists: lets the DFQ stage and the INT8 simulation run
    on conventional networks (block-aware then equals per-channel).
    """
    from eqdeploy.export import PlainModel
    from eqdeploy.groups import Group
    from eqdeploy.spec import SymmetrySpec, trivial_layout

    model = model.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    traced = example.repeat(2, 1, 1, 1)[: max(2, example.shape[0])]
    program = torch.export.export(model, (traced,), dynamic_shapes=({0: batch},))
    group, reps = Group("C1"), {}
    tensors = {}
    for node in program.graph.nodes:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and val.dim() in (2, 4) and node.op != "get_attr" \
                and (node.op == "call_function" or node.name in
                     program.graph_signature.user_inputs):
            tensors[node.name] = trivial_layout(reps, group, int(val.shape[1]), val.dim() == 4)
    user_in = program.graph_signature.user_inputs[0]
    out = program.graph_signature.user_outputs[0]
    spec = SymmetrySpec(group, reps, tensors[user_in], tensors[out], tensors)
    spec.validate()
    return PlainModel(program, spec, example, {"framework": "torch"})
