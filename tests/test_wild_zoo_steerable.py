"""Wild zoo INT8 (issue 11): the e2cnn and escnn notebooks' steerable CNNs (C8; C16 with
a global adaptive max pool; escnn D8).

One INT8 ``--target all`` CLI conversion per model, read by the shared checks of
``wild_zoo_checks`` (0 changed outputs under every exact element in both runtimes, top-1
>= 0.97 vs FP32, integer kernels, FP32 artifacts equal to the source).
"""

from __future__ import annotations

import pytest
from wild_zoo_checks import (  # noqa: F401 - pytest collects the imported tests here
    test_fp32_artifacts_match_the_source,
    test_int8_outputs_unchanged_under_every_exact_element,
    test_int8_runs_in_integers,
    test_int8_top1_agrees_with_fp32,
    zoo_fixture,
)

MODELS = ["c8_steerable", "c16_steerable", "escnn_d8_steerable"]


@pytest.fixture(scope="module", params=MODELS)
def zoo(request, tmp_path_factory):
    return zoo_fixture(request, tmp_path_factory)
