"""Distilled data-free INT8 ranges: the trained c8_residual stays faithful with no real data."""

from __future__ import annotations

import numpy as np
import pytest

from eqdeploy.datasets import MNIST_MEAN, MNIST_STD
from eqdeploy.errors import EqdeployError

INPUT_RANGE = (-MNIST_MEAN / MNIST_STD, (1 - MNIST_MEAN) / MNIST_STD)
SIZE = 33  # c8_residual's exact input size


@pytest.fixture(scope="module")
def c8():
    """The trained c8_residual: plain graph (BN kept), DFQ output, distilled inputs."""
    import torch

    from eqdeploy.dfq import run_dfq
    from eqdeploy.export import export_equivariant
    from eqdeploy.models import reference as R
    from eqdeploy.quantize.distill import distill_inputs

    model = R.c8_residual()
    plain = export_equivariant(model, torch.zeros(1, 1, SIZE, SIZE))
    folded, _ = run_dfq(plain)
    info: dict = {}
    x = distill_inputs(plain, (1, 1, SIZE, SIZE), INPUT_RANGE, seed=0, info=info)
    return plain, folded, x, info


@pytest.fixture(scope="module")
def held_out():
    import torch

    from eqdeploy.datasets import load_mnist29

    return torch.from_numpy(load_mnist29("test", size=SIZE)[0][:256])


def _fidelity(plain, folded, calibration, probes) -> dict:
    from eqdeploy.quantize.params import compute_qparams
    from eqdeploy.quantize.simulate import fidelity, simulate_with

    qp = compute_qparams(folded, calibration=calibration, input_range=INPUT_RANGE)
    return fidelity(plain, simulate_with(folded, qp), probes)


def test_distilled_ranges_keep_c8_residual_top1(c8, held_out):
    """Issue 4 bar: data-free INT8 simulation agrees with FP32 on >= 97% of held-out digits."""
    plain, folded, x, _ = c8
    f = _fidelity(plain, folded, x, held_out)
    assert f["top1_agreement"] >= 0.97
    assert f["sqnr_db"] >= 20.0


def test_distilled_beats_noise_of_the_same_range(c8, held_out):
    """The optimization matters: untrained noise in the input range gives worse SQNR."""
    plain, folded, x, _ = c8
    noise = np.random.default_rng(0).uniform(*INPUT_RANGE, size=x.shape).astype(np.float32)
    assert _fidelity(plain, folded, x, held_out)["sqnr_db"] > \
        _fidelity(plain, folded, noise, held_out)["sqnr_db"] + 3.0


def test_batch_statistics_match_the_stored_ones(c8):
    """In range, and BN batch statistics much closer to the running ones than noise's."""
    import torch

    from eqdeploy.quantize.distill import _bn_loss, _probe, bn_targets

    plain, _, x, info = c8
    assert x.shape == (16, 1, SIZE, SIZE) and x.dtype == np.float32
    assert x.min() >= INPUT_RANGE[0] - 1e-6 and x.max() <= INPUT_RANGE[1] + 1e-6
    assert info["bn_layers"] == 4
    assert info["bn_loss_end"] < 0.2 * info["bn_loss_start"]
    gm = plain.module()
    targets = bn_targets(gm)
    probe = _probe(gm, set(targets))
    noise = np.random.default_rng(0).uniform(*INPUT_RANGE, size=x.shape).astype(np.float32)
    with torch.no_grad():
        loss = {k: float(_bn_loss(probe(torch.from_numpy(v))[:-1], list(targets.values())))
                for k, v in (("distilled", x), ("noise", noise))}
    assert loss["distilled"] == pytest.approx(info["bn_loss_end"], rel=1e-4)
    assert loss["distilled"] < 0.3 * loss["noise"]


def test_deterministic_for_a_seed(c8):
    from eqdeploy.quantize.distill import distill_inputs

    plain, _, x, _ = c8
    again = distill_inputs(plain, (1, SIZE, SIZE), INPUT_RANGE, seed=0)
    assert np.array_equal(again, x)
    other = distill_inputs(plain, (1, SIZE, SIZE), INPUT_RANGE, seed=1)
    assert not np.array_equal(other, x)


def test_folded_model_has_nothing_to_distill_from(c8):
    from eqdeploy.quantize.distill import distill_inputs, has_batchnorm

    plain, folded, _, _ = c8
    assert has_batchnorm(plain) and not has_batchnorm(folded)
    with pytest.raises(EqdeployError, match="no eval-mode batch norm"):
        distill_inputs(folded, (1, SIZE, SIZE), INPUT_RANGE, steps=1)
