"""What a conversion writes into its output folder, and writing it without losing a file.

- ``planned_outputs``: every file name a conversion will write (artifacts, their ``.fp32``
  twins for INT8, taps, sidecars, probes, the report).
- ``check_outputs``: never over an input (model, calibration, probes, even with
  ``--force``); never over a file that no eqdeploy report in the folder lists, unless
  ``--force``; returns the previous conversion's files the new one does not write (read
  from its report's ``files``), which ``Staging.commit`` removes.
- ``Staging``: a hidden ``.eqdeploy-<pid>-*`` folder inside the output folder; ``commit``
  re-checks the files actually staged and moves them in with SIGINT/SIGTERM held back, and
  the staging folder goes on every exit (SIGTERM unwinds as ``Interrupted``, see
  ``eqdeploy.toplevel``). Staging folders of dead processes (SIGKILL) are removed.
- ``check_destination``: one file a command will write (``bench --json``), checked first.
No torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from eqdeploy.errors import EqdeployError, Interrupted
from eqdeploy.harness.probes import PROBES_SUFFIX
from eqdeploy.harness.runtime import SIDECAR_SUFFIX

REPORT_SUFFIXES = (".report.json", ".report.md")
STAGING_PREFIX = ".eqdeploy-"
FILES_KEY = "files"  # the report's list of every file the conversion wrote


def fp32_name(artifact: str) -> str:
    """``m.tflite`` -> ``m.fp32.tflite``: the FP32 twin an INT8 conversion writes."""
    p = Path(artifact)
    return p.with_name(f"{p.stem}.fp32{p.suffix}").name


PLOT_SUFFIX = ".equivariance.png"  # convert's per-element plot (written when matplotlib is)


def plots_available() -> bool:
    """Will the conversion write its plot? (matplotlib installed; found without importing)"""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def planned_outputs(name: str, targets: list[str], int8: bool, tap: bool,
                    plots: bool = False) -> list[str]:
    """Every file a conversion of ``name`` writes (``plots``: the per-element plot too)."""
    from eqdeploy.targets import TARGETS

    files = []
    for target in targets:
        ext = TARGETS[target]
        arts = [f"{name}{ext}"] + ([f"{name}.tap{ext}"] if tap else [])
        for art in arts + ([fp32_name(a) for a in arts] if int8 else []):
            files += [art, art + SIDECAR_SUFFIX, art + PROBES_SUFFIX]
    return files + [name + s for s in REPORT_SUFFIXES] + ([name + PLOT_SUFFIX] if plots else [])


def _plain_name(f: object) -> bool:
    return isinstance(f, str) and f not in ("", ".", "..") and Path(f).name == f \
        and "\\" not in f


def previous_outputs(outdir: Path, name: str) -> set[str] | None:
    """The files an earlier eqdeploy conversion of ``name`` wrote into ``outdir``, as its
    report lists them (plain file names only); None without a readable report."""
    report = outdir / f"{name}.report.json"
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema") != "eqdeploy.convert":
        return None
    files = data.get(FILES_KEY)
    if not isinstance(files, list):  # reports before FILES_KEY: artifacts + their sidecars
        files = [name + s for s in REPORT_SUFFIXES]
        for a in data.get("artifacts") or []:
            f = a.get("file") if isinstance(a, dict) else None
            if isinstance(f, str):
                files += [f, f + SIDECAR_SUFFIX, f + PROBES_SUFFIX]
    return {f for f in files if _plain_name(f)}


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(outdir: Path, name: str, outputs: list[str], inputs: dict[str, Path],
                  force: bool = False) -> list[str]:
    """Refuse to write over an input or over files of unknown origin (unless ``force``);
    returns the previous conversion's files that ``outputs`` does not replace."""
    for f in outputs:
        dest = outdir / f
        for role, path in inputs.items():
            if _same(dest, path):
                raise EqdeployError(f"the output {dest} would overwrite the input {role} file "
                                    f"{path}", "write to another folder (-o DIR) or rename "
                                    "the input")
        if dest.is_dir():
            raise EqdeployError(f"the output {dest} is a folder", "remove it or pass -o DIR")
    previous = previous_outputs(outdir, name) or set()
    foreign = [f for f in outputs if (outdir / f).exists() and f not in previous]
    if foreign and not force:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise EqdeployError(f"{outdir / foreign[0]}{more} exists and no eqdeploy report in "
                            f"{outdir} lists it", "pass --force to replace it, or -o another "
                            "folder")
    protected = [Path(p) for p in inputs.values()]
    return sorted(f for f in previous - set(outputs) if (outdir / f).is_file()
                  and not any(_same(outdir / f, p) for p in protected))


def check_destination(path: str | Path, option: str, inputs: dict[str, Path]) -> list[Path]:
    """A file a command will write after its work: not an input, not a folder, its folder
    creatable and writable (created now; returns the folders created)."""
    path = Path(path)
    if str(path) == "-":
        return []
    if path.is_dir():
        raise EqdeployError(f"{option} {path} is a folder", f"give a file path for {option}")
    for role, p in inputs.items():
        if _same(path, p):
            raise EqdeployError(f"{option} {path} would overwrite the input {role} file",
                                f"give {option} another file name")
    missing, p = [], path.parent
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as e:
        for d in missing:
            with contextlib.suppress(OSError):
                d.rmdir()
        raise EqdeployError(f"{option} {path}: its folder cannot be written ({e.strerror})",
                            f"give {option} a path in a folder you can write to") from None
    return missing


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back (while files move into place), then act on them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: pending.append(signum))
           for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if pending:
            raise KeyboardInterrupt if pending[0] == signal.SIGINT else Interrupted(pending[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class Staging:
    """``with Staging(outdir, name, inputs) as folder:`` write into ``folder``, then
    ``commit()``; the folder is removed however the block ends."""

    def __init__(self, outdir: Path, name: str, inputs: dict[str, Path], force: bool = False):
        self.outdir, self.name, self.inputs, self.force = Path(outdir), name, inputs, force
        self.path: Path | None = None

    def __enter__(self) -> Path:
        self.outdir.mkdir(parents=True, exist_ok=True)
        for old in self.outdir.glob(f"{STAGING_PREFIX}*-*"):
            pid = old.name[len(STAGING_PREFIX):].split("-")[0]
            if old.is_dir() and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)  # left by a killed run
        self.path = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-",
                                          dir=self.outdir))
        return self.path

    def __exit__(self, *exc) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)

    def staged(self) -> list[str]:
        assert self.path is not None
        return sorted(p.name for p in self.path.iterdir())

    def commit(self) -> list[str]:
        """Move every staged file into the output folder, after removing the previous
        conversion's files the new one does not replace; returns those removed."""
        assert self.path is not None
        names = self.staged()
        stale = check_outputs(self.outdir, self.name, names, self.inputs, self.force)
        with signals_held():
            for f in stale:
                (self.outdir / f).unlink(missing_ok=True)
            for f in names:
                os.replace(self.path / f, self.outdir / f)
        return stale
