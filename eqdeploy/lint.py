"""Input-size lint: which strided layers break exact rotation equivariance at a given size.

A conv/pool with kernel k, stride s, padding p, dilation d on an n-pixel axis samples
windows symmetric about the centre iff ``(n + 2p - d(k-1) - 1) % s == 0``; otherwise even
90-degree rotations stop being exact (measured: 2.7e-2 error at 33 px vs 1.7e-7 at 35 px
on one net). The lint walks the graph's spatial sizes for the given input size and for
nearby sizes, and names the offending layers and the nearest sizes that are exact. What is
checked follows the group's exact elements (``requirement``): 90-degree rotations need a
square input aligned on both axes, 180 degrees both axes, flips the width only, and C1
(no exact non-identity element) nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import fx

from eqdeploy.errors import EqdeployError
from eqdeploy.groups import Group

aten = torch.ops.aten


@dataclass(frozen=True)
class Window:
    """A sliding-window op on the spatial axes."""

    node: str
    op: str
    kernel: int
    stride: int
    padding: int
    dilation: int
    ceil_mode: bool

    def out_size(self, n: int) -> int:
        span = n + 2 * self.padding - self.dilation * (self.kernel - 1) - 1
        rounding = math.ceil if self.ceil_mode else math.floor
        out = rounding(span / self.stride) + 1
        if self.ceil_mode and (out - 1) * self.stride >= n + self.padding:
            out -= 1  # PyTorch drops a last window that starts in the padding
        return out

    def exact_at(self, n: int) -> bool:
        span = n + 2 * self.padding - self.dilation * (self.kernel - 1) - 1
        return span >= 0 and span % self.stride == 0


def _first(v, default: int) -> int:
    if isinstance(v, (list, tuple)):
        return int(v[0]) if v else default
    return default if v is None else int(v)


def _window(node: fx.Node) -> Window | None:
    a = list(node.args)
    t = node.target
    if t in (aten.conv2d.default, aten.convolution.default):
        w_shape = a[1].meta["val"].shape
        return Window(node.name, "conv2d", int(w_shape[-2]), _first(a[3] if len(a) > 3 else 1, 1),
                      _first(a[4] if len(a) > 4 else 0, 0), _first(a[5] if len(a) > 5 else 1, 1),
                      False)
    if t in (aten.max_pool2d.default, aten.max_pool2d_with_indices.default):
        k = _first(a[1], 1)
        return Window(node.name, "max_pool2d", k, _first(a[2] if len(a) > 2 else k, k),
                      _first(a[3] if len(a) > 3 else 0, 0), _first(a[4] if len(a) > 4 else 1, 1),
                      bool(a[5]) if len(a) > 5 else False)
    if t == aten.avg_pool2d.default:
        k = _first(a[1], 1)
        return Window(node.name, "avg_pool2d", k, _first(a[2] if len(a) > 2 else k, k),
                      _first(a[3] if len(a) > 3 else 0, 0), 1,
                      bool(a[4]) if len(a) > 4 else False)
    return None


def _spatial(node: fx.Node) -> tuple[int, int] | None:
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor) and val.dim() == 4:
        return int(val.shape[2]), int(val.shape[3])
    return None


def module_path(node: fx.Node) -> str:
    """The user-facing module path that produced ``node`` (e.g. ``features.3``)."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = [p for p, _ in stack.values()]
    path = paths[-1] if paths else node.name
    path = path.removeprefix("model.")
    return path.removesuffix(".plain") if path.endswith(".plain") else path


def _walk(gm: fx.GraphModule, input_name: str, n: int
          ) -> tuple[list[dict], bool, list[tuple[fx.Node, Window, int]]]:
    """Propagate an n-pixel axis through the graph; returns the strided layers' findings,
    whether every op's spatial rule was known, and every window op with its input size."""
    size: dict[str, int] = {input_name: n}
    findings = []
    windows = []
    consistent = True
    for node in gm.graph.nodes:
        if node.op != "call_function" or _spatial(node) is None:
            continue
        args = [x for x in node.args if isinstance(x, fx.Node) and x.name in size]
        if not args:
            continue
        n_in = size[args[0].name]
        win = _window(node)
        if win is not None:
            windows.append((node, win, n_in))
            size[node.name] = win.out_size(n_in)
            if win.stride > 1 or win.ceil_mode:
                findings.append({"layer": module_path(node), "node": node.name, "op": win.op,
                                 "input_size": n_in,
                                 "kernel": win.kernel, "stride": win.stride,
                                 "padding": win.padding, "exact": win.exact_at(n_in)})
        elif node.target in (aten.adaptive_avg_pool2d.default,
                             aten.adaptive_max_pool2d.default):
            out = _first(node.args[1], 1)
            size[node.name] = out
            if n_in % out:
                findings.append({"layer": module_path(node), "node": node.name,
                                 "op": "adaptive_pool", "input_size": n_in,
                                 "kernel": 0, "stride": 0, "padding": 0, "exact": False})
        elif _spatial(node) == _spatial(args[0]):
            size[node.name] = n_in
        elif _spatial(node) == (1, 1):
            size[node.name] = 1
        else:
            consistent = False  # an op whose spatial rule we do not know
    return findings, consistent, windows


@dataclass(frozen=True)
class Requirement:
    """What a group's exact elements need of the input size: the axes whose strided windows
    must be centred, whether the input must be square, and a name for the elements."""

    axes: tuple[int, ...]  # 0: height, 1: width
    square: bool
    what: str


def requirement(group: Group | str | None) -> Requirement:
    """Rotations by 90 degrees need both axes aligned and a square input; 180 degrees both
    axes; flips (they mirror W) the width only; C1 nothing. ``None``: as for C4."""
    if group is None:
        return Requirement((0, 1), True, "90-degree rotations")
    group = Group(group) if isinstance(group, str) else group
    turns = {e.quarter_turns % 4 for e in group.exact_elements}
    flips = any(e.flip for e in group.exact_elements)
    quarter = bool(turns & {1, 3})
    parts = (["90-degree rotations"] if quarter else ["180-degree rotations"] if 2 in turns
             else []) + (["flips"] if flips else [])
    axes = (0, 1) if turns - {0} else (1,) if flips else ()
    return Requirement(axes, quarter, " and ".join(parts))


def _nearest(gm: fx.GraphModule, input_name: str, n: int, search: int) -> list[int]:
    nearest: list[int] = []
    for delta in range(1, search + 1):
        for m in (n - delta, n + delta):
            if m > 0 and all(f["exact"] for f in _walk(gm, input_name, m)[0]):
                nearest.append(m)
        if len(nearest) >= 2:
            break
    return sorted(nearest)


def lint_input_size(gm: fx.GraphModule, input_name: str, height: int, width: int,
                    search: int = 24, group: Group | str | None = None) -> dict:
    """Lint result for an ``height x width`` input under ``group``'s exact elements
    (``requirement``): offending layers, nearest exact sizes."""
    need = requirement(group)
    base = {"input_size": [height, width], "requires": need.what or "nothing",
            "axes": ["height", "width"] if need.axes == (0, 1) else
            ["width"] if need.axes else []}
    if not need.axes:
        return {**base, "exact": True, "strided_layers": [], "offending": [],
                "nearest_exact": [], "complete": True,
                "message": "the group has no exact non-identity element: any input size"}
    if need.square and height != width:
        return {**base, "exact": False, "offending": [], "nearest_exact": [],
                "message": f"{need.what} need square inputs (got {height}x{width})"}
    findings, known, bad, nearest = [], True, [], []
    sizes: dict[int, list[str]] = {}  # distinct size -> the axes that have it
    for axis in need.axes:
        sizes.setdefault((height, width)[axis], []).append(("height", "width")[axis])
    for n, axes in sizes.items():
        found, ok, _ = _walk(gm, input_name, n)
        label = " and ".join(axes)
        findings += [{**f, "axis": label} for f in found]
        known = known and ok
        offending = [{**f, "axis": label} for f in found if not f["exact"]]
        if offending and not bad:
            nearest = _nearest(gm, input_name, n, search)
        bad += offending
    return {**base, "exact": not bad, "strided_layers": findings, "offending": bad,
            "nearest_exact": nearest, "complete": known}


def lint_message(result: dict) -> str:
    """One line for the user."""
    h, w = result["input_size"]
    what = result.get("requires", "90-degree rotations")
    if result.get("message"):
        return result["message"]
    only_width = result.get("axes") == ["width"] and h != w
    size = f"input width {w}" if only_width else f"input size {h}" if h == w else \
        f"input size {h}x{w}"
    if result["exact"]:
        return f"{size} is aligned: {what} are exact"
    first = result["offending"][0]
    sizes = ", ".join(str(n) for n in result["nearest_exact"]) or "none nearby"
    return (f"{size} is misaligned at layer {first['layer']} "
            f"({first['op']} k={first['kernel']} s={first['stride']} p={first['padding']} on "
            f"{first['input_size']} px): {what} are not exact; exact "
            f"{'widths' if only_width else 'sizes'}: {sizes}")


def check_input_extent(gm: fx.GraphModule, input_name: str, height: int, width: int) -> None:
    """Refuse an input smaller than the first sliding window it meets (e.g. 1x1 into a 5x5
    conv): the model then sees mostly padding and a rotation of so few pixels proves
    nothing."""
    for n, axis in ((height, "height"), (width, "width")):
        windows = _walk(gm, input_name, n)[2]
        if not windows:
            continue
        node, win, n_in = windows[0]
        extent = win.dilation * (win.kernel - 1) + 1
        if n_in < extent:
            raise EqdeployError(
                f"the input {axis} {n} is smaller than the {extent}x{extent} window of layer "
                f"{module_path(node)} that reads it: the model would be verified on padding",
                f"pass --input-shape with H, W >= {extent} (the size the model was trained at)")
