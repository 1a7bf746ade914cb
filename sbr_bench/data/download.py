"""Resumable HTTP downloads with checksum verification, standard library only (urllib).

`download(url, dest)` writes into `dest + ".part"`, resumes an interrupted transfer with a
`Range: bytes=N-` request, verifies size and sha256 once the transfer is complete, and only then moves
the file onto `dest` (os.replace, atomic), so `dest` never holds a partial or corrupt file.
Every failure the user can act on raises `UserError`; network failures also say where to put the file
by hand, because several dataset hosts (Google Drive, Kaggle) cannot be scripted reliably.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import UserError

USER_AGENT = "sbr-bench/0.1 (+https://github.com/; dataset download)"
# 4xx answers that may succeed later (timeout, rate limit); every other 4xx is permanent.
_RETRYABLE_4XX = {408, 429}
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")


def sha256_file(path, chunk=1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (datasets are several GiB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def md5_file(path, chunk=1 << 20) -> str:
    """Hex md5 of a file: some datasets publish only md5 sums (not for security, only integrity)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def manual_hint(dest) -> str:
    """Where a file downloaded by hand has to go."""
    dest = Path(dest)
    return f"download it by hand and save it as '{dest.name}' in the folder '{dest.parent}/' (full path: {dest})"


class DownloadError(UserError):
    """The file could not be fetched (network, HTTP); `reason` is the cause without the advice."""

    def __init__(self, message, reason):
        super().__init__(message)
        self.reason = reason


class ChecksumError(UserError):
    """The file arrived but its size or sha256 is not the expected one."""


class _Interrupted(Exception):
    """The transfer stopped early; the .part file keeps what arrived, so a retry resumes."""


class _Restart(Exception):
    """The .part file cannot be resumed (server ignored Range, or it is longer than the file)."""


def download(url, dest, sha256=None, size=None, chunk=1 << 20, timeout=60, retries=3, progress=True,
             backoff=1.0, hint=None, min_rate=1024, rate_window=60.0, deadline=None) -> Path:
    """Download `url` to `dest` and return `dest` as a Path.

    - Bytes go to `dest.part`; a later call (or a retry within this call) resumes from its length
      with `Range: bytes=N-`. A server that ignores Range (answers 200) is read again from zero; a
      416 answer means the .part already holds the whole file (verified next) or is unusable (deleted).
    - `size` (bytes) and `sha256` (hex), when given, are checked after the transfer; a mismatch deletes
      the .part and raises `UserError` naming URL, file, expected and got values. The size the server
      announces is checked too (a short body is an interrupted transfer and is resumed).
    - If `dest` already exists it is verified and returned without any network access.
    - `retries`: how many more attempts after the first failed one (network errors, 5xx, 408, 429,
      truncated bodies); an attempt that received bytes is retried at once, otherwise after `backoff`
      seconds doubling each time. Other HTTP errors (404, 403, ...) fail at once.
    - `hint`: extra text for the "download it by hand" message (for example an archive member name).
    - `min_rate` bytes/s over every `rate_window` seconds, else the attempt counts as stalled (a server
      that drips bytes never trips the socket timeout); `deadline`: seconds for the whole download.
      Bytes are written as they arrive, so whatever came before a stall is kept for the resume.
    - Without a checksum or size, a server that sends no length cannot be checked for completeness: the
      file is kept but marked unverified (`dest.unverified`) and a warning says so.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    unverified = dest.with_name(dest.name + ".unverified")
    if dest.exists():
        _verify(dest, url, sha256, size, delete_on_mismatch=False)
        if unverified.exists() and (sha256 is not None or size is not None):
            unverified.unlink()  # a known checksum or size has just verified it
        elif unverified.exists():
            _warn_unverified(dest)
        return dest
    started = time.monotonic()
    dest.parent.mkdir(parents=True, exist_ok=True)
    expected_total = size
    delay = backoff
    attempt = 0
    last_error = None
    while True:
        have = part.stat().st_size if part.exists() else 0
        restarted = False
        try:
            if expected_total is not None and have > expected_total:
                raise _Restart(f"{part} is longer than the file ({have} > {expected_total} bytes)")
            if expected_total is not None and have == expected_total:
                break  # a previous run fetched everything but stopped before verification
            until = None if deadline is None else started + deadline
            total = _transfer(url, part, have, chunk, timeout, progress, min_rate, rate_window, until)
            if total is not None:
                expected_total = total if size is None else size
                got = part.stat().st_size
                if got < total:
                    raise _Interrupted(f"connection closed after {got} of {total} bytes")
            break
        except _Restart as e:
            part.unlink(missing_ok=True)
            last_error = str(e)
            restarted = True
        except urllib.error.HTTPError as e:
            if e.code == 416:
                total = _unsatisfied_total(e)
                e.close()
                if total is not None and have == total:
                    expected_total = total if size is None else size
                    break  # the .part is already complete
                part.unlink(missing_ok=True)
                last_error = f"HTTP 416 (range {have}- not satisfiable; restarting from zero)"
                restarted = True
            elif 300 <= e.code < 400:  # urllib follows redirects; one that reaches us loops or goes nowhere
                raise _network_error(url, dest, f"HTTP {e.code}: {e.reason} (redirects that never end)",
                                     hint) from None
            elif 400 <= e.code < 500 and e.code not in _RETRYABLE_4XX:
                raise _network_error(url, dest, f"HTTP {e.code} {e.reason}", hint) from None
            else:
                last_error = f"HTTP {e.code} {e.reason}"
        except _Interrupted as e:
            last_error = str(e)
        except (urllib.error.URLError, http.client.HTTPException, OSError, socket.timeout) as e:
            last_error = _describe(e)
        attempt += 1
        if attempt > retries:
            raise _network_error(url, dest, f"{last_error} (after {attempt} attempts)", hint)
        if deadline is not None and time.monotonic() - started > deadline:
            raise _network_error(url, dest, f"{last_error} (past the {deadline:g} s deadline)", hint)
        progressed = restarted or (part.exists() and part.stat().st_size != have)
        if not progressed:  # wait only when the server gave nothing; a resumable transfer goes on at once
            time.sleep(delay)
            delay *= 2
    _verify(part, url, sha256, size if size is not None else expected_total, delete_on_mismatch=True)
    with open(part, "rb") as f:
        os.fsync(f.fileno())
    if sha256 is None and size is None and expected_total is None:
        unverified.write_text(f"{url}: the server sent no length and no checksum is known; an early close "
                              "would look like a complete file\n")
    os.replace(part, dest)
    if unverified.exists():
        _warn_unverified(dest)
    return dest


def _warn_unverified(dest) -> None:
    print(f"sbr-bench: warning: {dest} is unverified: its server sent no length and no checksum is known, so a "
          "transfer cut short would look complete; compare it with the source, then delete "
          f"{dest.name}.unverified", file=sys.stderr)


def _transfer(url, part, have, chunk, timeout, progress, min_rate=0, rate_window=60.0, until=None):
    """One HTTP request that appends to `part`. Returns the total file size, or None if unknown."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        status = getattr(resp, "status", None) or 200  # file:// answers carry no status
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                raise _Restart(f"server answered a different range ({resp.headers.get('Content-Range')!r})")
            total = int(m.group(3)) if m.group(3) != "*" else None
            mode = "ab"
        else:  # 200: the server ignored Range (or none was sent), so the body is the whole file
            have, total, mode = 0, length, "wb"
        received = 0
        window_start, window_bytes = time.monotonic(), 0
        bar = _progress_bar(total, have, Path(part).name[: -len(".part")], progress)
        try:
            with open(part, mode) as f:
                while block := _read(resp, chunk, have + received):
                    _write(f, block, part)
                    f.flush()  # what arrived stays in the .part even if the next read stalls
                    received += len(block)
                    bar.update(len(block))
                    window_bytes += len(block)
                    if until is not None and time.monotonic() > until:
                        raise _Interrupted(f"past the deadline after {have + received} bytes")
                    elapsed = time.monotonic() - window_start
                    if elapsed >= rate_window:
                        if window_bytes < min_rate * elapsed:
                            raise _Interrupted(f"slower than {min_rate} bytes/s for {elapsed:.0f} s "
                                               f"after {have + received} bytes")
                        window_start, window_bytes = time.monotonic(), 0
        except OSError as e:
            if isinstance(e, _DiskError):
                raise UserError(str(e)) from None  # not a network error: no retry
            raise
        finally:
            bar.close()
        return total


class _DiskError(OSError):
    """Writing the download failed (disk full, permissions): retrying the network will not help."""


def _write(f, block, part) -> None:
    try:
        f.write(block)
    except OSError as e:
        raise _DiskError(f"cannot write {part}: {e.strerror or e}") from None


def _read(resp, chunk, so_far):
    try:  # read1: the bytes available now (up to chunk), not a wait for a whole chunk
        return resp.read1(chunk) if hasattr(resp, "read1") else resp.read(chunk)
    except (http.client.HTTPException, ConnectionError, socket.timeout) as e:
        raise _Interrupted(f"{_describe(e)} after {so_far} bytes") from None


def _progress_bar(total, initial, name, progress):
    from tqdm import tqdm

    enabled = progress and sys.stderr.isatty()
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                disable=not enabled, leave=False)


def _unsatisfied_total(error):
    m = _UNSATISFIED_RANGE.match(error.headers.get("Content-Range", "") if error.headers else "")
    return int(m.group(1)) if m else None


def _verify(path, url, sha256, size, delete_on_mismatch):
    path = Path(path)
    got_size = path.stat().st_size
    problem = None
    if size is not None and got_size != size:
        problem = f"expected {size} bytes, got {got_size} bytes"
    elif sha256 is not None:
        got = sha256_file(path)
        if got.lower() != sha256.lower():
            problem = f"expected sha256 {sha256.lower()}, got {got}"
    if problem is None:
        return
    if delete_on_mismatch:
        path.unlink(missing_ok=True)
        raise ChecksumError(f"checksum mismatch for {url} (file {path}, deleted): {problem}; the download was "
                        "corrupted or the server now serves a different file")
    raise ChecksumError(f"checksum mismatch for {path} (expected the file from {url}): {problem}; delete it "
                    "to download it again")


def _describe(error) -> str:
    if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError):
        return f"network error: {error.reason}"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _network_error(url, dest, reason, hint) -> DownloadError:
    text = f"could not download {url}: {reason}. To continue without the network, {manual_hint(dest)}"
    return DownloadError(f"{text}; {hint}" if hint else text, reason)
