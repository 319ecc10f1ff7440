"""The resume journal: the partial folder of a run, what it already holds, and how it is finished.

A run writes into a hidden folder next to its output folder, ``.<name>.partial``, named after the
output folder alone so that a later ``--resume`` finds it. The folder is renamed to the output
folder when everything is written, so outputs only ever appear complete. Inside it,
``journal.jsonl`` holds one JSON object per line::

    {"event": "start", "version": 1, "fingerprint": {"scene": ..., "model": ..., "settings": ...}}
    {"event": "rows", "until": 1024}

A ``rows`` line says that output rows ``[0, until)`` of every raster are durably on disk. It is
appended only after the rasters have been closed (so their TIFF directories are written) and
synced, so the last complete line is always true; a line torn by a kill mid-append is ignored.
The fingerprint records the scene, the model weights and every setting that changes pixels, and
``--resume`` refuses a journal whose fingerprint differs, naming what changed.

A lock (``flock`` on ``.lock`` in the partial folder) keeps two runs from writing the same output
folder; the kernel releases it when its process dies, however it dies.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from geoseg.errors import OutputError, ResumeError

if TYPE_CHECKING:
    from geoseg.io.read import SceneInfo
    from geoseg.model import SegmentationModel

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, runs are not guarded
    fcntl = None  # type: ignore[assignment]

JOURNAL_VERSION = 1
JOURNAL_NAME = "journal.jsonl"
LOCK_NAME = ".lock"

Log = Callable[[str], None]


class Checkpointable(Protocol):
    """A raster writer whose flushed rows can be made durable (see ``write.RasterWriter``)."""

    @property
    def rows_flushed(self) -> int:
        """Rows ``[0, rows_flushed)`` have been handed to the file."""
        ...

    def flush(self) -> None:
        """Hand every queued row to the file, including a last, partial block row."""
        ...

    def checkpoint(self) -> None:
        """Make every flushed row durable and keep writing."""
        ...

    def suspend(self) -> None:
        """Make every flushed row durable and stop writing, keeping the file."""
        ...


def partial_dir(target: Path) -> Path:
    """The hidden folder a run into ``target`` writes to before it is renamed to ``target``."""
    return target.with_name(f".{target.name}.partial")


def recorded_settings(target: Path) -> dict[str, Any] | None:
    """The settings the interrupted run into ``target`` recorded (None: no usable journal)."""
    state = JournalState.read(partial_dir(target) / JOURNAL_NAME)
    if state is None:
        return None
    settings = state.fingerprint.get("settings")
    return dict(settings) if isinstance(settings, Mapping) else None


def is_remote(source: str) -> bool:
    """Whether ``source`` is a URL or a GDAL virtual path rather than a local file."""
    return source.startswith(("/vsi", "s3://", "gs://", "az://", "http://", "https://"))


def scene_fingerprint(info: SceneInfo, sources: Sequence[str | Path]) -> dict[str, Any]:
    """What identifies a scene: its files (with size and modification time when local) and grid."""
    files: list[dict[str, Any]] = []
    for source in sources:
        text = str(source)
        if is_remote(text):
            files.append({"path": text})
            continue
        path = Path(text).resolve()
        stat = path.stat()
        files.append({"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return {
        "files": files,
        "size": [info.width, info.height],
        "count": info.count,
        "dtype": info.dtype,
        "crs": info.crs.to_wkt() if info.crs else None,
        "transform": [float(v) for v in tuple(info.transform)[:6]],
        "nodata": _plain(info.nodata),
    }


def model_fingerprint(model: SegmentationModel) -> dict[str, Any]:
    """The model's name and a SHA-256 of its card and weights (identical weights, same digest)."""
    import torch

    digest = hashlib.sha256()
    digest.update(json.dumps(model.card.to_dict(), sort_keys=True, default=str).encode())
    for key, tensor in model.module.state_dict().items():
        digest.update(key.encode())
        t = tensor.detach().cpu().contiguous()
        if t.dtype.is_floating_point and t.element_size() == 2:
            # numpy has no bfloat16; the raw 16-bit patterns identify the weights just as well
            t = t.view(dtype=torch.int16)
        digest.update(str(t.dtype).encode())
        digest.update(t.numpy().tobytes())
    return {"name": model.card.name, "sha256": digest.hexdigest()}


def _plain(value: Any) -> Any:
    """JSON-comparable form: NaN (a common nodata value) never equals itself, its name does."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def _normalised(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` as it reads back from JSON (tuples become lists), for comparison."""
    result: dict[str, Any] = json.loads(json.dumps(data, default=str))
    return result


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``["settings.batch_size: 8 -> 4", ...]`` for the leaves that differ."""
    a, b = _flatten(old), _flatten(new)
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            before, after = a.get(key, "(none)"), b.get(key, "(none)")
            if key == "model.sha256":
                before, after = str(before)[:12], str(after)[:12]
            out.append(f"{key}: {_short(before)} -> {_short(after)}")
    return out


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


class JournalState:
    """What a journal says: the fingerprint of its run and how many output rows are durable."""

    def __init__(self, fingerprint: dict[str, Any], rows_done: int) -> None:
        self.fingerprint = fingerprint
        self.rows_done = rows_done

    @classmethod
    def read(cls, path: Path) -> JournalState | None:
        """Parse ``path``; ``None`` when it is missing or does not start like a geoseg journal."""
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return None
        records = []
        for number, line in enumerate(lines):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if number == len(lines) - 1:
                    break  # torn by a kill in the middle of an append: the lines before hold
                return None
        if not records or records[0].get("event") != "start":
            return None
        if records[0].get("version") != JOURNAL_VERSION:
            return None
        rows = 0
        for record in records[1:]:
            if record.get("event") == "rows":
                rows = max(rows, int(record["until"]))
        return cls(dict(records[0].get("fingerprint", {})), rows)


class PartialRun:
    """The partial folder of one run: its lock, its journal and its fate (finish, keep, discard).

    Open it with :meth:`open`; then :meth:`checkpoint` as rasters fill, and end with exactly one
    of :meth:`finish` (rename into place), :meth:`keep` (interrupted: left for ``--resume``, after
    :meth:`suspend` made what the writers hold durable) or :meth:`discard` (failed: remove).
    """

    def __init__(
        self,
        path: Path,
        target: Path,
        lock: IO[str] | None,
        rows_done: int,
        fingerprint: Mapping[str, Any],
    ) -> None:
        self.path = path
        self.target = target
        self.rows_done = rows_done
        self.fingerprint = dict(fingerprint)  # the run's (scene, model, settings), as journaled
        self._lock_handle = lock
        self._mutex = threading.Lock()

    @property
    def journal_path(self) -> Path:
        """Where the journal lives."""
        return self.path / JOURNAL_NAME

    @classmethod
    def open(
        cls,
        target: Path,
        fingerprint: Mapping[str, Any],
        *,
        resume: bool,
        log: Log | None = None,
    ) -> PartialRun:
        """Start a run into ``target``, or continue the interrupted one when ``resume``.

        Without ``resume`` a stale partial folder (from a killed or interrupted run) is replaced.
        With it, the partial folder is kept when its journal's fingerprint matches and refused
        (:class:`ResumeError`) when it does not; with no partial folder the run starts afresh.
        """
        say = log or (lambda _msg: None)
        path = partial_dir(target)
        wanted = _normalised(fingerprint)
        if path.exists():
            lock = _acquire_lock(path, target)
            state = JournalState.read(path / JOURNAL_NAME) if resume else None
            if state is not None:
                changed = differences(state.fingerprint, wanted)
                if changed:
                    _release(lock)
                    raise ResumeError(
                        f"cannot resume {target}: the interrupted run in {path} used other "
                        f"inputs or settings ({'; '.join(changed)}); repeat them exactly, or run "
                        "without --resume to start over"
                    )
                say(f"geoseg: resuming {target}: output rows 0..{state.rows_done} are done")
                return cls(path, target, lock, state.rows_done, wanted)
            if resume:
                say(f"geoseg: {path} holds no usable journal; starting {target} from the beginning")
            else:
                say(f"geoseg: replacing the interrupted run in {path} (--resume continues it)")
            _release(lock)
            shutil.rmtree(path)
        elif resume:
            say(f"geoseg: no interrupted run to resume for {target}; starting from the beginning")
        try:
            path.mkdir()
        except FileExistsError:
            raise OutputError(
                f"another geoseg run started writing {target} at the same moment; wait for it "
                "to finish or pass another -o"
            ) from None
        except OSError as exc:
            raise OutputError(
                f"cannot create {path}: {exc.strerror}; pass -o with a folder you can write to"
            ) from exc
        run = cls(path, target, _acquire_lock(path, target), 0, wanted)
        run._append({"event": "start", "version": JOURNAL_VERSION, "fingerprint": wanted})
        return run

    def checkpoint(self, writers: Iterable[Checkpointable], *, final: bool = False) -> None:
        """Journal the rows every writer has flushed, once they are durable (no-op if none new).

        ``final`` (every row has been written) flushes the writers' queued rows first, so that
        the journal covers the whole height before any output is copied into place.
        """
        group = list(writers)
        if final:
            for writer in group:
                writer.flush()
        rows = min((w.rows_flushed for w in group), default=0)
        if rows <= self.rows_done:
            return
        for writer in group:
            writer.checkpoint()
        self._append({"event": "rows", "until": rows})
        self.rows_done = rows

    def suspend(self, writers: Iterable[Checkpointable]) -> None:
        """After an interruption: make the rows the writers flushed durable and journal them."""
        group = list(writers)
        rows = min((w.rows_flushed for w in group), default=0)
        for writer in group:
            writer.suspend()
        if rows > self.rows_done:
            self._append({"event": "rows", "until": rows})
            self.rows_done = rows

    def keep(self) -> None:
        """Leave the folder as it is for ``--resume`` (an interrupted run) and release the lock."""
        self._unlock()

    def finish(self, *, overwrite: bool) -> None:
        """Drop the journal and rename the folder to the target; Ctrl-C waits until it is done."""
        from geoseg.io.write import rename_into_place

        with interrupts_deferred():
            self.journal_path.unlink(missing_ok=True)
            self._unlock()
            (self.path / LOCK_NAME).unlink(missing_ok=True)
            rename_into_place(self.path, self.target, overwrite=overwrite)

    def discard(self) -> None:
        """Remove the folder and everything in it (a failed run)."""
        self._unlock()
        shutil.rmtree(self.path, ignore_errors=True)

    def _append(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._mutex, open(self.journal_path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def _unlock(self) -> None:
        _release(self._lock_handle)
        self._lock_handle = None


def _acquire_lock(folder: Path, target: Path) -> IO[str] | None:
    if fcntl is None:  # pragma: no cover - Windows
        return None
    try:
        handle = open(folder / LOCK_NAME, "a+", encoding="utf-8")  # noqa: SIM115 - held open
    except OSError as exc:
        raise OutputError(
            f"cannot write in {folder}: {exc.strerror}; pass -o with a folder you can write to"
        ) from exc
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise OutputError(
            f"another geoseg run is writing {target} right now ({folder} is locked); wait for it "
            "to finish or pass another -o"
        ) from None
    return handle


def _release(handle: IO[str] | None) -> None:
    if handle is not None and not handle.closed:
        handle.close()  # closing the descriptor releases the flock


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT) until the block is done, then raise it.

    Used around the final renames so that an interruption never leaves outputs half-renamed.
    Only the main thread can install signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is None:  # installed outside Python: cannot be restored, so leave it alone
        yield
        return
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt
