"""Graph normalization: each rewrite keeps the outputs identical and leaves the canonical form.

Every model here is written the way user code writes it (in-place ops, tuple-returning
pools, squeeze chains, biases added after reshapes); ``normalize_program`` must remove the
pattern and keep the function.
"""

from __future__ import annotations

import operator

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from eqdeploy.errors import EqdeployError
from eqdeploy.normalize import normalize_program, rewrite_table

aten = torch.ops.aten


def _normalized(model: nn.Module, shape=(2, 3, 9, 9)):
    """(counts, call_function targets after) with outputs checked identical on 3 inputs."""
    model = model.eval()
    x = torch.randn(*shape)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("b")},))
    new, counts = normalize_program(program, x[:1])
    for n in (1, 3, 4):
        xi = torch.randn(n, *shape[1:])
        with torch.no_grad():
            ref, got = model(xi), new.module()(xi)
        assert got.shape == ref.shape
        assert torch.allclose(got, ref, rtol=1e-5, atol=1e-6), float((got - ref).abs().max())
    targets = [n.target for n in new.graph.nodes if n.op == "call_function"]
    assert operator.getitem not in targets
    assert not any(getattr(t, "_schema", None) is not None and t._schema.is_mutable
                   for t in targets)
    return counts, targets


class _InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.conv(x)
        out += x[:, :1]  # augmented assignment on a tensor
        view = out.view(out.shape[0], 4, -1)
        F.relu(view, inplace=True)  # mutates `out` through a view
        out.add_(1.0)
        return self.relu(out) * 2


def test_in_place_ops_become_functional():
    counts, targets = _normalized(_InPlace())
    assert counts["functionalize"] >= 3
    assert aten.add.Tensor in targets and aten.relu.default in targets


class _GroupPools(nn.Module):
    def __init__(self, style: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.style = style

    def forward(self, x):
        y = self.conv(x)
        b, c, h, w = y.shape
        v = y.view(b, c // 4, 4, h, w)
        if self.style == "getitem":
            y = v.max(dim=2)[0]
        elif self.style == "tuple":
            y, _ = torch.max(v, 2)
        else:
            y = torch.min(v, dim=2).values
        return F.adaptive_max_pool2d(y, 1).squeeze(-1).squeeze(-1)


@pytest.mark.parametrize("style", ["getitem", "tuple", "min"])
def test_tuple_pools_become_amax(style):
    counts, targets = _normalized(_GroupPools(style))
    assert counts["tuple ops"] == 2
    assert aten.max.dim not in targets and aten.adaptive_max_pool2d.default not in targets
    assert (aten.amin.default if style == "min" else aten.amax.default) in targets


class _Splits(nn.Module):
    def forward(self, x):
        a, b, c = torch.split(x, 1, dim=1)
        d, e = torch.chunk(x, 2, dim=2)
        r = torch.unbind(x, dim=1)
        return torch.cat([a * 2, b + c, r[2].unsqueeze(1), d[:, :1, :4] + e[:, 1:2]], 2)


def test_split_chunk_unbind_become_slices():
    counts, targets = _normalized(_Splits())
    assert counts["tuple ops"] == 3 and aten.slice.Tensor in targets


class _AdaptiveMax(nn.Module):
    def forward(self, x):
        return F.adaptive_max_pool2d(x, 3) + F.adaptive_avg_pool2d(x, 1) \
            + F.adaptive_avg_pool2d(x, (9, 9))[:, :, ::3, ::3]


def test_adaptive_pools_become_plain_pools():
    _, targets = _normalized(_AdaptiveMax())
    assert aten.adaptive_max_pool2d.default not in targets
    assert aten.adaptive_avg_pool2d.default not in targets
    assert aten.max_pool2d.default in targets and aten.mean.dim in targets


class _StackMean(nn.Module):
    """A rotation stack on the last axis pooled over H, W (the kernel-rotating tutorial)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = torch.stack([self.conv(torch.rot90(x, k, (2, 3))) for k in range(4)], dim=-1)
        return y.mean(dim=(2, 3), keepdim=True).squeeze(2).squeeze(2) + y.mean((2, 3))


def test_spatial_means_of_stacks_become_4d_means():
    counts, targets = _normalized(_StackMean())
    assert counts["spatial means"] == 2
    assert aten.mean.dim in targets and aten.permute.default in targets


class _NoOps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        y = self.drop(x.clone().contiguous()) * 1
        y = y.permute(0, 1, 2, 3) + 0
        return torch.cat([y.reshape(y.shape)], 1).to(torch.float32)


def test_no_ops_are_dropped():
    counts, targets = _normalized(_NoOps())
    assert targets == []  # the graph is the identity


class _ShapeChains(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 5)

    def forward(self, x):
        y = x.mean(dim=(-1, -2), keepdim=True)
        y = y.squeeze(-1).squeeze(-1).unsqueeze(1).flatten(1)  # (N, 3) in four steps
        z = x.transpose(1, 2).permute(0, 2, 1, 3)  # == x
        return self.fc(y) + z.flatten(1)[:, :5]


def test_shape_chains_become_one_reshape():
    counts, targets = _normalized(_ShapeChains())
    assert targets.count(aten.reshape.default) == 2  # one per chain (y; z.flatten)
    assert aten.squeeze.dim not in targets and aten.transpose.int not in targets
    # transpose(1, 2) then permute(0, 2, 1, 3) compose to the identity: dropped
    assert aten.permute.default not in targets


class _BiasAfterReshape(nn.Module):
    """A conv shared over 4 stacked copies, its bias added after the 5-D view."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bias = nn.Parameter(torch.randn(2))

    def forward(self, x):
        y = self.conv(x)
        y = y.view(y.shape[0], 2, 4, *y.shape[2:]) + self.bias.view(1, 2, 1, 1, 1)
        return y.amax(dim=2)


def test_constant_bias_after_reshape_folds_into_the_conv():
    counts, targets = _normalized(_BiasAfterReshape())
    assert counts["constant biases"] == 1 and aten.add.Tensor not in targets


class _UsesIndices(nn.Module):
    def forward(self, x):
        values, index = x.max(dim=1)
        return values + index.float()


def test_used_indices_stop_with_the_source_line():
    x = torch.randn(2, 3, 5, 5)
    program = torch.export.export(_UsesIndices(), (x,))
    with pytest.raises(EqdeployError) as e:
        normalize_program(program, x[:1])
    msg = str(e.value)
    assert "indices" in msg and "test_normalize.py:" in msg and "\n" not in msg


def test_layouts_are_carried_to_the_renamed_nodes():
    """An e2cnn model: every tensor that had a layout still has one, under its new name."""
    from eqdeploy.export import export_equivariant
    from eqdeploy.models.reference import c4_cnn
    from eqdeploy.normalize import normalize

    pm = export_equivariant(c4_cnn(), torch.zeros(1, 1, 29, 29))
    new = normalize(pm)
    assert len(new.spec.tensors) >= len(pm.spec.tensors)
    x = np.random.default_rng(0).standard_normal((2, 1, 29, 29)).astype(np.float32)
    with torch.no_grad():
        a, b = pm.module()(torch.from_numpy(x)), new.module()(torch.from_numpy(x))
    assert torch.equal(a, b)


def test_rewrite_table_names_every_step():
    names = [n for n, _ in rewrite_table()]
    assert names[:2] == ["functionalize", "constants"] and "tuple ops" in names
