"""Pre-quantization rewrites: a user head with nn.AdaptiveAvgPool2d(1) quantizes like a mean."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class _PooledHead(nn.Module):
    """e2cnn C4 features, group pooling, then the user's own AdaptiveAvgPool2d + Linear."""

    def __init__(self) -> None:
        super().__init__()
        from e2cnn import gspaces
        from e2cnn import nn as enn

        gs = gspaces.Rot2dOnR2(4)
        self.input_type = enn.FieldType(gs, [gs.trivial_repr])
        f = enn.FieldType(gs, 4 * [gs.regular_repr])
        self.features = enn.SequentialModule(
            enn.R2Conv(self.input_type, f, 5, padding=2, bias=False), enn.InnerBatchNorm(f),
            enn.ReLU(f), enn.GroupPooling(f))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from e2cnn import nn as enn

        x = self.features(enn.GeometricTensor(x, self.input_type)).tensor
        return self.head(torch.flatten(self.pool(x), 1))


def _model() -> nn.Module:
    from eqdeploy.models.reference import settle_batchnorm

    torch.manual_seed(0)
    return settle_batchnorm(_PooledHead(), (8, 1, 29, 29))


def test_global_pool_becomes_an_exact_mean():
    from eqdeploy.export import export_equivariant
    from eqdeploy.quantize.normalize import global_pools_to_mean

    pm = export_equivariant(_model(), torch.zeros(1, 1, 29, 29))
    new, count = global_pools_to_mean(pm)
    targets = {n.target for n in new.program.graph.nodes}
    assert count == 1 and torch.ops.aten.adaptive_avg_pool2d.default not in targets
    x = torch.randn(3, 1, 29, 29)
    with torch.no_grad():
        assert torch.allclose(new.module()(x), pm.module()(x), atol=1e-6)
    assert global_pools_to_mean(new)[1] == 0


def test_int8_onnx_with_adaptive_pool_head_is_bit_exact(tmp_path):
    import dill

    from eqdeploy.convert import ConvertOptions, convert

    path = tmp_path / "pooled.pt"
    torch.save(_model(), path, pickle_module=dill)
    report = convert(path, ConvertOptions(targets=["onnx"], outdir=tmp_path / "out",
                                          input_shape=(1, 1, 29, 29), int8=True, probes=8))
    row = next(v for v in report["verification"] if v.get("artifact") == "pooled.onnx")
    assert [r["changed"] for r in row["equivariance"]] == [0, 0, 0]
    assert row["max_steps_vs_simulation"] <= 1.0 + 1e-3
    assert np.isfinite(row["rel_err_vs_source"])
