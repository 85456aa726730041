"""Output folders: one rule for every command that writes one.

Every output folder records what wrote it in a small marker file, ``.medrobust.json`` (the
command, a hash of its config, the config itself, the medrobust version and a history of
events). A command refuses a folder that holds something else (files medrobust did not write,
the output of another command, or the same command with a different config) unless
``--overwrite`` is given; then the old files are moved into ``old-<time>/`` inside the folder,
never deleted. A lock file, ``.medrobust.lock``, stops a second writer with a sentence that
names the running one.

Usage (once per command, before anything is written)::

    claim_output_dir(run_dir, "eval-seg", cfg.model_dump(mode="json"))
    ...                                # write the outputs
    release_output_dir(run_dir)        # also done at process exit

The CLI turns ``--overwrite`` on with :func:`overwrite_mode`.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from medrobust.errors import ConfigError

log = logging.getLogger(__name__)

MARKER = ".medrobust.json"
LOCK = ".medrobust.lock"
OLD_PREFIX = "old-"
#: files that hold no result: a folder holding only these is as good as empty
TRIVIAL = {MARKER, LOCK, "log.txt"}
#: config keys that change how a command runs, not what it computes
RUNTIME_KEYS = ("output_dir", "device", "num_workers", "distributed")

_overwrite: contextvars.ContextVar[bool] = contextvars.ContextVar("medrobust_overwrite", default=False)
_held: dict[str, Path] = {}


# ============================================================================ options
@contextlib.contextmanager
def overwrite_mode(enabled: bool = True) -> Iterator[None]:
    """Within the block, conflicting output folders are moved aside instead of refused."""
    token = _overwrite.set(bool(enabled))
    try:
        yield
    finally:
        _overwrite.reset(token)


def overwrite_enabled() -> bool:
    return _overwrite.get()


# ============================================================================ config identity
def normalise_config(config: dict[str, Any], ignore: Iterable[str] = RUNTIME_KEYS) -> dict[str, Any]:
    """The config without the top-level keys that do not change results."""
    return {k: v for k, v in (config or {}).items() if k not in set(ignore)}


def config_hash(config: dict[str, Any], ignore: Iterable[str] = RUNTIME_KEYS) -> str:
    """A short stable hash of a config (JSON, sorted keys), ignoring runtime-only keys."""
    text = json.dumps(normalise_config(config, ignore), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_diff(old: Any, new: Any, prefix: str = "", ignore: Iterable[str] = RUNTIME_KEYS) -> list[str]:
    """Dotted keys whose values differ between two nested configs (top-level ``ignore`` keys skipped)."""
    ignore = set(ignore) if not prefix else set()
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in list(old) + [k for k in new if k not in old]:
            if k in ignore:
                continue
            key = f"{prefix}{k}"
            if k not in old or k not in new:
                out.append(key)
            else:
                out.extend(config_diff(old[k], new[k], key + "."))
        return out
    return [] if _same(old, new) else [prefix.rstrip(".") or "<root>"]


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def describe_diff(old: dict[str, Any], new: dict[str, Any], keys: list[str], limit: int = 6) -> str:
    """``a.b: 1 -> 2, c: x -> y`` for the first ``limit`` changed keys."""

    def get(d: Any, key: str) -> Any:
        for part in key.split("."):
            if not isinstance(d, dict) or part not in d:
                return "<unset>"
            d = d[part]
        return d

    shown = [f"{k}: {json.dumps(get(old, k), default=str)} -> {json.dumps(get(new, k), default=str)}" for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(shown) + more


# ============================================================================ folder state
def check_writable_dir(path: str | os.PathLike, what: str = "output_dir") -> Path:
    """Make sure ``path`` is (or can become) a writable folder; one sentence otherwise."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{what} '{p}' is a file, not a folder; choose a folder path for {what}.")
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"{what} '{p}' cannot be created because '{probe}' is a file; choose another {what}.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} '{p}' is not writable ('{probe}' denies write access); choose a folder you can write to.")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{what} '{p}' could not be created ({exc.strerror or exc}); choose a folder you can write to.") from None
    return p


def read_marker(path: str | os.PathLike) -> Optional[dict[str, Any]]:
    p = Path(path) / MARKER
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text())
        return data if isinstance(data, dict) else {"command": "unknown"}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {"command": "unknown"}


def result_entries(path: str | os.PathLike) -> list[str]:
    """Names in the folder that hold results (not the marker, the lock, the log or moved-aside files)."""
    p = Path(path)
    if not p.is_dir():
        return []
    return sorted(e.name for e in p.iterdir() if e.name not in TRIVIAL and not e.name.startswith(OLD_PREFIX)
                  and not (e.name.startswith(".") and e.name.endswith(".tmp")))


def move_aside(path: str | os.PathLike) -> Path:
    """Move every entry of the folder (except the lock and earlier ``old-*`` folders) into ``old-<time>/``."""
    p = Path(path)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    dest = p / f"{OLD_PREFIX}{stamp}"
    n = 1
    while dest.exists():
        n += 1
        dest = p / f"{OLD_PREFIX}{stamp}-{n}"
    dest.mkdir()
    moved = 0
    for e in sorted(p.iterdir()):
        if e == dest or e.name == LOCK or e.name.startswith(OLD_PREFIX):
            continue
        shutil.move(str(e), str(dest / e.name))
        moved += 1
    log.warning("--overwrite: moved %d earlier file(s) of '%s' into '%s'", moved, p, dest)
    return dest


# ============================================================================ lock
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def acquire_lock(path: str | os.PathLike, command: str) -> None:
    """Create ``path/.medrobust.lock``; refuse when another live process holds it.

    Re-entrant within one process (a pipeline, or tests calling the library twice). A lock
    left by a process that no longer runs on this host is taken over with a warning.
    """
    p = Path(path)
    lock = p / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
          "started": _dt.datetime.now().isoformat(timespec="seconds")}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                other = json.loads(lock.read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                other = {}
            pid, host = other.get("pid"), other.get("host")
            if pid == os.getpid() and host == me["host"]:
                _held[str(p.resolve())] = p
                return
            if host == me["host"] and isinstance(pid, int) and not _pid_alive(pid):
                log.warning("taking over the stale lock of `medrobust %s` (pid %s, no longer running) in '%s'",
                            other.get("command", "?"), pid, p)
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            raise ConfigError(
                f"output_dir '{p}' is in use by `medrobust {other.get('command', '?')}` (pid {pid} on {host}, started "
                f"{other.get('started', '?')}); wait for it to finish or choose another output_dir (delete '{lock}' only if "
                f"that process is gone).")
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        _held[str(p.resolve())] = p
        return
    raise ConfigError(f"could not take the lock '{lock}'; another process keeps creating it, so choose another output_dir.")


def release_output_dir(path: str | os.PathLike) -> None:
    """Remove this process's lock on ``path`` (a no-op when it holds none)."""
    p = Path(path)
    key = str(p.resolve()) if p.exists() else str(p)
    _held.pop(key, None)
    lock = p / LOCK
    try:
        other = json.loads(lock.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return
    if other.get("pid") == os.getpid() and other.get("host") == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


def release_all() -> None:
    """Release every lock this process holds (called at exit and by the CLI after each command)."""
    for p in list(_held.values()):
        release_output_dir(p)
    _held.clear()


atexit.register(release_all)


# ============================================================================ marker
def write_marker(path: str | os.PathLike, command: str, config: dict[str, Any], event: str = "started",
                 previous: Optional[dict[str, Any]] = None) -> None:
    """Record (or update) what writes this folder."""
    from medrobust import __version__
    from medrobust.utils import to_jsonable, write_json_atomic

    now = _dt.datetime.now().isoformat(timespec="seconds")
    history = list((previous or {}).get("history", []))
    history.append({"time": now, "event": event, "command": command})
    write_json_atomic(Path(path) / MARKER, {
        "written_by": "medrobust", "command": command, "config_hash": config_hash(config),
        "medrobust_version": str(__version__), "created": (previous or {}).get("created", now), "updated": now,
        "history": history[-50:], "config": to_jsonable(normalise_config(config)),
    })


def _refusal(p: Path, reason: str) -> ConfigError:
    return ConfigError(f"output_dir '{p}' {reason}; choose another output_dir, or pass --overwrite to move the old "
                       f"files into '{p / (OLD_PREFIX + '<time>')}' first.")


def conflict_reason(path: str | os.PathLike, command: str, config: dict[str, Any],
                    compatible: Iterable[str] = ()) -> Optional[str]:
    """Why ``command`` with ``config`` may not write into ``path`` (None when it may)."""
    p = Path(path)
    entries = result_entries(p)
    if not entries:
        return None
    marker = read_marker(p)
    if marker is None:
        shown = ", ".join(f"'{e}'" for e in entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        return f"already holds files that medrobust did not write ({shown})"
    other = marker.get("command", "unknown")
    if other != command and other not in set(compatible):
        return f"holds the output of `medrobust {other}`"
    if marker.get("config_hash") != config_hash(config):
        old = marker.get("config") or {}
        keys = config_diff(old, normalise_config(config))
        what = f" (changed: {describe_diff(old, normalise_config(config), keys)})" if keys else ""
        return f"holds a `medrobust {other}` run made with a different config{what}"
    return None


def claim_output_dir(path: str | os.PathLike, command: str, config: dict[str, Any],
                     compatible: Iterable[str] = ()) -> Path:
    """Check, lock and mark an output folder before a command writes into it.

    Args:
        path: the output folder (created when missing).
        command: the command that writes it, e.g. ``eval-seg``.
        config: the command's resolved config (JSON-able dict); its hash identifies the run.
        compatible: other commands whose outputs this one may share a folder with.

    Returns:
        The folder as a ``Path``.

    Raises:
        ConfigError: the path is a file or not writable, another process writes into it, or it
            holds something else and ``--overwrite`` was not given.
    """
    p = check_writable_dir(path)
    acquire_lock(p, command)
    try:
        reason = conflict_reason(p, command, config, compatible)
        previous = read_marker(p)
        if reason is not None:
            if not overwrite_enabled():
                raise _refusal(p, reason)
            move_aside(p)
            previous = None
        write_marker(p, command, config, "started", previous)
    except BaseException:
        release_output_dir(p)
        raise
    return p
