"""Where a graph node came from in the user's code: file, line and module path."""

from __future__ import annotations

from torch import fx


def source_line(node: fx.Node) -> str | None:
    """``file.py:28 (out += x)``: the innermost frame of the node's ``stack_trace``."""
    trace = node.meta.get("stack_trace") or ""
    lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip()]
    frames = [i for i, ln in enumerate(lines) if ln.startswith("File ")]
    if not frames:
        return None
    i = frames[-1]
    head = lines[i]  # File "/path/model.py", line 28, in forward
    try:
        path = head.split('"')[1]
        line = head.split(", line ")[1].split(",")[0]
    except IndexError:
        return None
    code = lines[i + 1] if i + 1 < len(lines) and not lines[i + 1].startswith("File ") else ""
    short = path.rsplit("/", 1)[-1]
    return f"{short}:{line}" + (f" ({code})" if code else "")


def module_path(node: fx.Node) -> str | None:
    """Dotted path of the innermost module whose forward produced ``node``."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = [p for p, _ in stack.values() if p]
    return paths[-1] if paths else None


def where(node: fx.Node) -> str:
    """`` (module features.3, model.py:28 (out += x))`` or ``""`` when nothing is known."""
    parts = [f"module {m}" for m in [module_path(node)] if m]
    parts += [s for s in [source_line(node)] if s]
    return f" ({', '.join(parts)})" if parts else ""


def unmapped(target: str, graph: fx.Graph, names: list[str], what: str):
    """The one-line error for graph nodes a target's artifact has no tensor for."""
    from eqdeploy.errors import EqdeployError

    nodes = {n.name: n for n in graph.nodes}
    first = names[0]
    more = f" (and {len(names) - 1} more: {', '.join(names[1:4])})" if len(names) > 1 else ""
    other = "tflite" if target == "onnx" else "onnx"
    loc = where(nodes[first]) if first in nodes else ""
    return EqdeployError(f"the {target} artifact has no {what} for node {first}{loc}{more}",
                         f"report this model to eqdeploy; try --target {other}")
