r"""Running the geoseg command line from QGIS: finding it, checking it, streaming its output.

Standard library only, and no QGIS either, so it is tested without QGIS: QGIS's own Python never
imports geoseg, torch or rasterio; geoseg runs in its own environment as a subprocess. What it
prints is turned into calls of a :class:`Sink` (the algorithms pass the Processing feedback):

- tqdm's progress bar (stderr, ``\r``-separated drawings ``... | 5/12 [00:03<00:04, ...]``)
  becomes a percentage;
- ``geoseg: warning: ...`` lines become warnings, ``geoseg: error: ...`` the error to fail with;
- every other line is logged as it is.
"""

from __future__ import annotations

import codecs
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

#: the Processing setting (Settings > Options > Processing > Providers > geoseg)
SETTING = "GEOSEG_EXECUTABLE"
SETTING_LABEL = "geoseg executable"
SETTING_WHERE = (
    f"Settings > Options > Processing > Providers > geoseg > '{SETTING_LABEL}' (setting {SETTING})"
)
#: written by ``geoseg qgis install`` next to this file
INSTALL_RECORD = "geoseg_install.json"
MIN_VERSION = (0, 1, 0)
#: the options of each geoseg command that the algorithms pass; checked before a run
OPTIONS = {
    "run": ("--out", "--model", "--tile-size", "--overlap", "--device", "--resolution",
            "--scale", "--no-vector", "--overwrite", "--resume"),
    "vectorize": ("--out", "--classes", "--min-area", "--simplify", "--smooth",
                  "--connectivity", "--overwrite"),
}  # fmt: skip
ERROR_PREFIX = "geoseg: error:"
WARNING_PREFIX = "geoseg: warning:"
HOW_TO_POINT = (
    "run `geoseg qgis install` from the Python environment where geoseg is installed (it "
    f"records that geoseg for the plugin), or set {SETTING_WHERE} to the path of its geoseg "
    "executable (e.g. /path/to/venv/bin/geoseg, or C:\\...\\Scripts\\geoseg.exe)"
)
#: a tqdm drawing: "  42%|████      | 5/12 [00:03<00:04,  2.1tile/s]"
_TQDM = re.compile(r"(\d+)/(\d+) \[[^\]]*\]\s*$")
#: what the child must not inherit from QGIS: its Python, and its GDAL/PROJ data, which need not
#: match the versions inside geoseg's environment
_QGIS_ONLY_ENV = (
    "PYTHONHOME",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "PYTHONEXECUTABLE",
    "GDAL_DATA",
    "GDAL_DRIVER_PATH",
    "PROJ_LIB",
    "PROJ_DATA",
)
_STOP_GRACE_S = 10.0  # after Cancel, how long geoseg may take to save its partial run


class ExecutableError(Exception):
    """No usable geoseg executable: missing, not geoseg, or too old for this plugin."""


class Sink:
    """Where a run's output goes; the algorithms adapt a ``QgsProcessingFeedback`` to it."""

    def progress(self, percent: float) -> None:
        """The run is ``percent`` (0-100) done."""

    def stage(self, text: str) -> None:
        """What the run does now (e.g. writing the outputs after the last tile)."""

    def info(self, line: str) -> None:
        """A log line of geoseg, as it printed it."""

    def warning(self, line: str) -> None:
        """A ``geoseg: warning: ...`` line."""

    def canceled(self) -> bool:
        """Whether the user asked to stop."""
        return False


@dataclass
class Outcome:
    """How a geoseg run ended."""

    returncode: int
    canceled: bool = False
    error: str | None = None  # geoseg's "geoseg: error: ..." line, if it printed one
    stderr_tail: list[str] = field(default_factory=list)  # its last other stderr lines

    @property
    def ok(self) -> bool:
        """Finished without error and without being canceled."""
        return self.returncode == 0 and not self.canceled

    def failure(self) -> str:
        """The message to fail with: geoseg's own error line, else what it printed last."""
        if self.error:
            return self.error
        tail = "\n".join(self.stderr_tail[-8:])
        return f"geoseg exited with status {self.returncode}" + (f":\n{tail}" if tail else "")


def find_executable(setting: str | None, plugin_dir: Path) -> tuple[str, str]:
    """The geoseg executable to run and where it was found.

    Order: the Processing setting, the path ``geoseg qgis install`` recorded in the plugin
    folder, ``geoseg`` on PATH. Raises :class:`ExecutableError` saying how to point the plugin
    at one.
    """
    if setting:
        if Path(setting).is_file():
            return setting, f"set in the plugin's settings ({SETTING})"
        raise ExecutableError(
            f"the geoseg executable set in the plugin's settings ({SETTING}), {setting}, does "
            "not exist; " + HOW_TO_POINT
        )
    recorded = _recorded_executable(plugin_dir / INSTALL_RECORD)
    if recorded is not None and Path(recorded).is_file():
        return recorded, f"recorded by `geoseg qgis install` in {plugin_dir / INSTALL_RECORD}"
    on_path = shutil.which("geoseg")
    if on_path:
        return on_path, "found on PATH"
    where = f" (the recorded {recorded} no longer exists)" if recorded else ""
    raise ExecutableError(
        f"geoseg executable not found: it is not set in the plugin's settings, not recorded by "
        f"`geoseg qgis install`{where} and not on PATH; " + HOW_TO_POINT
    )


def check_executable(path: str, command: str, options: Sequence[str], timeout: float = 60) -> str:
    """Check that ``path`` is a geoseg new enough for ``geoseg COMMAND OPTIONS``; its version.

    Raises :class:`ExecutableError` for a program that is not geoseg, is older than
    :data:`MIN_VERSION`, or whose ``COMMAND`` lacks one of ``options``.
    """
    version_out = _capture([path, "--version"], timeout)
    match = re.search(r"geoseg, version (\d+)\.(\d+)\.(\d+)", version_out)
    if match is None:
        raise ExecutableError(
            f"{path} is not a geoseg executable (`{Path(path).name} --version` printed "
            f"{version_out.strip()[:200]!r}); " + HOW_TO_POINT
        )
    version = tuple(int(v) for v in match.groups())
    text = ".".join(match.groups())
    if version < MIN_VERSION:
        need = ".".join(map(str, MIN_VERSION))
        raise ExecutableError(
            f"{path} is geoseg {text}; this plugin needs geoseg {need} or newer: upgrade it "
            "(pip install -U geoseg, or git pull && pip install -e . in its clone), then "
            + HOW_TO_POINT
        )
    help_out = _capture([path, command, "--help"], timeout)
    missing = [opt for opt in options if not re.search(rf"{re.escape(opt)}\b", help_out)]
    if missing:
        raise ExecutableError(
            f"{path} (geoseg {text}) is too old for this plugin: its `geoseg {command}` has no "
            f"{', '.join(missing)}; upgrade geoseg in that environment, or " + HOW_TO_POINT
        )
    return text


def run(
    command: Sequence[str], sink: Sink, *, poll_s: float = 0.1, grace_s: float = _STOP_GRACE_S
) -> Outcome:
    """Run ``command`` (a geoseg command line), streaming its output into ``sink``.

    A cancel (``sink.canceled()``) interrupts geoseg as Ctrl-C does (SIGINT to its process
    group; on Windows the process tree is ended): ``geoseg run`` then keeps its partial folder
    for ``--resume`` and leaves no complete-looking output. A geoseg that does not stop within
    ``grace_s`` is terminated, which ``--resume`` also continues from.
    """
    proc = subprocess.Popen(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_environment(),
        **_platform_options(),
    )
    events: queue.Queue[tuple[str, str | None]] = queue.Queue()
    assert proc.stdout is not None and proc.stderr is not None
    for name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        threading.Thread(target=_pump, args=(stream, name, events), daemon=True).start()
    reader = _StderrReader(sink)
    open_streams, canceled = 2, False
    while open_streams:
        if not canceled and sink.canceled():
            canceled = True
            sink.stage("stopping geoseg")
            stop(proc, grace_s)  # its last lines (how to resume) are still read below
        try:
            name, text = events.get(timeout=poll_s)
        except queue.Empty:
            continue
        if text is None:
            open_streams -= 1
        elif name == "stderr":
            reader.feed(text)
        elif text.strip():
            sink.info(text.rstrip())
    returncode = proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    return Outcome(returncode, canceled, reader.error, reader.tail)


def stop(proc: subprocess.Popen, grace_s: float = _STOP_GRACE_S) -> None:
    """Interrupt geoseg like Ctrl-C; terminate it (and its workers) if it does not stop."""
    if proc.poll() is not None:
        return
    if os.name == "nt":
        subprocess.run(
            ["taskkill", "/F", "/T", "/PID", str(proc.pid)],
            capture_output=True,
            **_platform_options(),
        )
        return
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)  # the child leads its own group (start_new_session)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace_s if sig == signal.SIGINT else 5.0)
            return
        except subprocess.TimeoutExpired:
            continue


def child_environment() -> dict:
    """QGIS's environment minus what belongs to QGIS's Python and GDAL, plus UTF-8 output."""
    env = {k: v for k, v in os.environ.items() if k not in _QGIS_ONLY_ENV}
    env["PYTHONIOENCODING"] = "utf-8"
    env["PYTHONUNBUFFERED"] = "1"
    return env


class _StderrReader:
    """Turns geoseg's stderr, piece by piece, into progress, log lines and its error."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.error: str | None = None
        self.tail: list[str] = []
        self._tiles_done = False

    def feed(self, piece: str) -> None:
        line = piece.strip()
        if not line:
            return
        bar = _TQDM.search(line)
        if bar is not None:
            done, total = int(bar.group(1)), int(bar.group(2))
            if total:
                # tiles are most of a run; the COGs, preview and polygons come after them
                self.sink.progress(min(95.0, 95.0 * done / total))
            if total and done >= total and not self._tiles_done:
                self._tiles_done = True
                self.sink.info(f"tiles: {bar.group(0).strip()}")
                self.sink.stage("writing the outputs (overviews, preview, polygons)")
            return
        if line.startswith(ERROR_PREFIX):
            self.error = line
        elif line.startswith(WARNING_PREFIX):
            self.sink.warning(line)
        else:
            self.tail = (self.tail + [line])[-20:]
            self.sink.info(line)


def _pump(stream: IO[bytes], name: str, events: queue.Queue) -> None:
    r"""Read ``stream`` to its end, putting each ``\n``- or ``\r``-ended piece on ``events``."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    read = getattr(stream, "read1", stream.read)
    while True:
        chunk = read(65536)
        text = decoder.decode(chunk, final=not chunk)
        pending += text
        pieces = re.split(r"\r\n|\r|\n", pending)
        pending = pieces.pop()
        for piece in pieces:
            events.put((name, piece))
        if not chunk:
            break
    if pending:
        events.put((name, pending))
    events.put((name, None))


def _capture(command: Sequence[str], timeout: float) -> str:
    """The stdout and stderr of a quick command; a program that cannot run is an ExecutableError."""
    try:
        done = subprocess.run(
            list(command),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env=child_environment(),
            **_platform_options(new_group=False),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ExecutableError(f"cannot run {command[0]}: {exc}; " + HOW_TO_POINT) from exc
    return (done.stdout + done.stderr).decode("utf-8", errors="replace")


def _recorded_executable(record: Path) -> str | None:
    try:
        value = json.loads(record.read_text(encoding="utf-8")).get("executable")
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if value else None


def _platform_options(new_group: bool = True) -> dict:
    """No console window on Windows; on POSIX its own process group, so Cancel reaches workers."""
    if os.name == "nt":
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        if new_group:
            flags |= getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        return {"creationflags": flags}
    return {"start_new_session": new_group}
