"""Wild zoo INT8 (issue 11): e2cnn's e2wrn.py wide ResNets (D4, and D8 restricted to D4).

One INT8 ``--target all`` CLI conversion per model, read by the shared checks of
``wild_zoo_checks`` (0 changed outputs under every exact element in both runtimes, top-1
>= 0.97 vs FP32, integer kernels, FP32 artifacts equal to the source).
"""

from wild_zoo_checks import *  # noqa: F403 - the shared zoo tests, collected here
from wild_zoo_checks import zoo_fixture_for

zoo = zoo_fixture_for(["wrn_d4", "wrn_d8_d4"])
