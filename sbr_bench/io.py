"""Atomic file writes: a crash never leaves a half-written cache, record or checkpoint. The temporary file
of a write is `.<name>.<host>-<pid>.<random>.tmp` next to its target (`<host>`: a short hash of the host
name); one left by a killed process is removed by `remove_orphans`, only on its own host and only when its
process is gone, so a concurrent writer's file stays, also on another node sharing the folder."""

import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the same folder; move it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{writer_tag()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)  # mkstemp creates 0600 files; give the usual permissions instead
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


_ORPHAN = re.compile(r"\..+\.([0-9a-f]{8})-(\d+)\.[^.]+\.tmp")


def writer_tag(pid: int | None = None) -> str:
    """`<host hash>-<pid>` of this process (or of `pid` on this host), as temporary file names carry it."""
    host = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
    return f"{host}-{os.getpid() if pid is None else pid}"


def remove_orphans(folder) -> list[Path]:
    """Delete the temporary files in `folder` (not below) whose writing process no longer runs on this
    machine; return them."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        m = _ORPHAN.fullmatch(path.name)
        if m and m.group(1) == writer_tag()[:8] and path.is_file() and not _running(int(m.group(2))):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        return True
    return True


def write_text(path, text):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path):
    return json.loads(Path(path).read_text())


def append_jsonl(path, obj):
    """Append one JSON line and flush it to disk (a torn last line is skipped by read_jsonl)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(obj, sort_keys=True, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path):
    rows = []
    if not Path(path).exists():
        return rows
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a crash mid-write
            continue
    return rows
