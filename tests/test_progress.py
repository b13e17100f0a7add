"""The stage display: plain lines off a terminal, a live moving line on one."""

from __future__ import annotations

import io
import time

from eqdeploy.progress import Progress


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    p = Progress(out, live=False)
    p("load model.pt")
    p.detail("step 3/50")  # not printed off a terminal
    p("export")
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].endswith("] load model.pt") and "\r" not in out.getvalue()
    assert lines[1].startswith("[") and lines[1].endswith("] export")


def test_live_line_moves_and_shows_sub_steps():
    out = io.StringIO()
    p = Progress(out, live=True, interval=0.02)
    p("distill")
    p.detail("step 7/50")
    time.sleep(0.15)
    p.close()
    text = out.getvalue()
    draws = text.split("\r")
    assert len(draws) >= 4  # redrawn by the ticker while the stage ran
    assert "distill step 7/50" in draws[-1] and text.endswith("\n")
    elapsed = [float(d.rsplit("(", 1)[1].split("s)")[0]) for d in draws[1:]]
    assert elapsed[-1] > elapsed[0] and elapsed[-1] >= 0.1
