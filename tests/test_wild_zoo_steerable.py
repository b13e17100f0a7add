"""Wild zoo INT8 (issue 11): the e2cnn and escnn notebooks' steerable CNNs (C8; C16 with
a global adaptive max pool; escnn D8).

One INT8 ``--target all`` CLI conversion per model, read by the shared checks of
``wild_zoo_checks`` (0 changed outputs under every exact element in both runtimes, top-1
>= 0.97 vs FP32, integer kernels, FP32 artifacts equal to the source).
"""

from wild_zoo_checks import *  # noqa: F403 - the shared zoo tests, collected here
from wild_zoo_checks import zoo_fixture_for

zoo = zoo_fixture_for(["c8_steerable", "c16_steerable", "escnn_d8_steerable"])
