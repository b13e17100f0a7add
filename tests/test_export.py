"""Export of the reference models: identical outputs, exact invariance, no e2cnn left."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eqdeploy.export import export_equivariant
from eqdeploy.harness.equivariance import equivariance_table
from eqdeploy.models.reference import EXACT_SIZES

REFERENCE = ["c4_cnn", "c8_residual", "d4_cnn"]


def _np(fn):
    def run(x):
        with torch.no_grad():
            return fn(torch.from_numpy(x)).numpy()
    return run


@pytest.mark.parametrize("name", REFERENCE)
def test_exported_graph_matches_source_and_is_invariant(name, reference_models):
    model = reference_models[name]
    n = EXACT_SIZES[name]
    plain = export_equivariant(model, torch.zeros(1, 1, n, n))
    probes = np.random.default_rng(1).standard_normal((6, 1, n, n)).astype(np.float32)
    src = _np(model)(probes)
    out = _np(plain.module())(probes)
    assert np.abs(out - src).max() <= 1e-5 * np.abs(src).max()
    rows = equivariance_table(_np(plain.module()), plain.spec, probes)
    assert len(rows) == len(plain.spec.group.exact_elements) >= 3
    assert max(r["rel_err_max"] for r in rows) <= 1e-5
    # the graph is plain aten: no e2cnn module or op survives
    targets = {str(n.target) for n in plain.program.graph.nodes if n.op == "call_function"}
    assert not [t for t in targets if "e2cnn" in t or "escnn" in t]
    assert plain.spec.output_is_invariant()
    assert plain.info["deployed_parameters"] > plain.info["trainable_parameters"]


def test_layouts_cover_every_conv_output(reference_models):
    model = reference_models["c8_residual"]
    plain = export_equivariant(model, torch.zeros(1, 1, 33, 33))
    convs = [n.name for n in plain.program.graph.nodes
             if n.op == "call_function" and "conv2d" in str(n.target)]
    assert convs and all(c in plain.spec.tensors for c in convs)
    reps = plain.spec.representations
    for c in convs:
        fields = plain.spec.tensors[c].fields
        assert {reps[r].kind for _, r in fields} <= {"regular", "trivial"}
    # the residual add and the ReLU after it carry the block's regular layout
    add = next(n.name for n in plain.program.graph.nodes if "add" in str(n.target))
    assert reps[plain.spec.tensors[add].fields[0][1]].kind == "regular"


def test_pointwise_max_pool_keeps_ceil_mode(reference_models):
    """e2cnn's own PointwiseMaxPool.export() drops ceil_mode; ours keeps it."""
    model = reference_models["c8_residual"]
    plain = export_equivariant(model, torch.zeros(1, 1, 33, 33))
    pools = [n for n in plain.program.graph.nodes if "max_pool2d" in str(n.target)]
    assert pools and all(n.args[-1] is True for n in pools)
    e2cnn_export = model.pool.export()
    assert e2cnn_export.ceil_mode is False  # the library bug this adapter works around
    x = torch.randn(1, 32, 16, 16)  # a size where ceil_mode changes the output size
    assert e2cnn_export(x).shape[-1] == 8
    assert torch.nn.functional.max_pool2d(x, 3, 2, 1, ceil_mode=True).shape[-1] == 9


def test_group_option_mismatch_is_one_line_error(reference_models):
    from eqdeploy.errors import EqdeployError

    with pytest.raises(EqdeployError, match="does not match the model's group C4"):
        export_equivariant(reference_models["c4_cnn"], torch.zeros(1, 1, 29, 29), "D4")
