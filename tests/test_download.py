"""Resumable downloads against a local HTTP server on 127.0.0.1 (never any other address)."""

import hashlib
import http.server
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from sbr_bench.data.download import ChecksumError, DownloadError, download, sha256_file
from sbr_bench.errors import UserError


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: closing mid-body is a plain short read

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        if self.path == "/loop":  # redirects to itself for ever
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        if srv.fail_next:
            srv.fail_next -= 1
            self.send_error(503)
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m and srv.honour_range:
            start = int(m.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        if not srv.no_length:
            self.send_header("Content-Length", str(len(body) - start))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        payload = body[start:]
        if srv.cut_next:  # announce the whole length, send part of it, then close the connection
            srv.cut_next -= 1
            payload = payload[: srv.cut_at]
        if srv.drip_after is not None:  # a fast start, then one byte at a time, slowly
            self.wfile.write(payload[: srv.drip_after])
            self.wfile.flush()
            for i in range(srv.drip_after, min(len(payload), srv.drip_after + srv.drip_bytes)):
                time.sleep(srv.drip_every)
                self.wfile.write(payload[i:i + 1])
                self.wfile.flush()
            return
        self.wfile.write(payload)


class LocalServer:
    """http.server on 127.0.0.1 with a free port; files by path; behaviours switchable per test."""

    def __init__(self):
        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.files, self.httpd.requests = {}, []
        self.httpd.honour_range, self.httpd.fail_next, self.httpd.cut_next, self.httpd.cut_at = True, 0, 0, 0
        self.httpd.no_length, self.httpd.drip_after, self.httpd.drip_bytes, self.httpd.drip_every = False, None, 0, 0
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def __getattr__(self, name):  # files, requests, honour_range, ... live on the server object
        return getattr(self.httpd, name)

    def __setattr__(self, name, value):
        if name in ("httpd", "thread"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.httpd, name, value)

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server():
    s = LocalServer()
    yield s
    s.close()


def closed_port_url(path="/file.bin"):
    """A URL on 127.0.0.1 whose port nobody listens on (connection refused at once)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}{path}"


def payload(n=300_000, seed=1):
    """Deterministic bytes that are not periodic (so a misplaced resume shows in the checksum)."""
    out, block = bytearray(), hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


DATA = payload()
DIGEST = hashlib.sha256(DATA).hexdigest()


def test_full_download_with_checksum(server, tmp_path):
    server.files["/f.bin"] = DATA
    dest = tmp_path / "raw" / "f.bin"
    got = download(server.url("/f.bin"), dest, sha256=DIGEST, size=len(DATA), chunk=65536, progress=False)
    assert got == dest and dest.read_bytes() == DATA
    assert not dest.with_name("f.bin.part").exists()
    assert server.requests == [("/f.bin", None)]
    assert sha256_file(dest) == DIGEST


def test_wrong_checksum_deletes_part_and_names_everything(server, tmp_path):
    server.files["/f.bin"] = DATA
    dest = tmp_path / "f.bin"
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as err:
        download(server.url("/f.bin"), dest, sha256=wrong, progress=False)
    msg = str(err.value)
    assert isinstance(err.value, UserError)
    assert server.url("/f.bin") in msg and str(dest.with_name("f.bin.part")) in msg
    assert wrong in msg and DIGEST in msg
    assert not dest.exists() and not dest.with_name("f.bin.part").exists()


def test_wrong_size_is_rejected(server, tmp_path):
    server.files["/f.bin"] = DATA
    dest = tmp_path / "f.bin"
    with pytest.raises(ChecksumError, match=f"expected {len(DATA) + 1} bytes, got {len(DATA)} bytes"):
        download(server.url("/f.bin"), dest, size=len(DATA) + 1, progress=False, retries=0)
    assert not dest.exists() and not dest.with_name("f.bin.part").exists()


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    server.files["/f.bin"] = DATA
    server.cut_next, server.cut_at = 1, 123_457
    dest = tmp_path / "f.bin"
    download(server.url("/f.bin"), dest, sha256=DIGEST, chunk=8192, retries=2, backoff=0, progress=False)
    assert dest.read_bytes() == DATA
    assert server.requests == [("/f.bin", None), ("/f.bin", "bytes=123457-")]


def test_part_file_from_a_killed_run_is_resumed(server, tmp_path):
    server.files["/f.bin"] = DATA
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(DATA[:100_000])
    download(server.url("/f.bin"), dest, sha256=DIGEST, progress=False)
    assert dest.read_bytes() == DATA
    assert server.requests == [("/f.bin", "bytes=100000-")]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.files["/f.bin"] = DATA
    server.honour_range = False
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(DATA[:100_000])
    download(server.url("/f.bin"), dest, sha256=DIGEST, progress=False)
    assert dest.read_bytes() == DATA  # not the first 100,000 bytes twice
    assert server.requests == [("/f.bin", "bytes=100000-")]


def test_interrupted_transfer_on_server_ignoring_range(server, tmp_path):
    server.files["/f.bin"] = DATA
    server.honour_range, server.cut_next, server.cut_at = False, 1, 50_000
    dest = tmp_path / "f.bin"
    download(server.url("/f.bin"), dest, sha256=DIGEST, retries=1, backoff=0, progress=False)
    assert dest.read_bytes() == DATA


def test_416_with_complete_part_file_is_accepted(server, tmp_path):
    server.files["/f.bin"] = DATA
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(DATA)  # fetched fully, but the run died before verifying
    download(server.url("/f.bin"), dest, sha256=DIGEST, progress=False)
    assert dest.read_bytes() == DATA
    assert server.requests == [("/f.bin", f"bytes={len(DATA)}-")]


def test_416_with_too_long_part_file_restarts(server, tmp_path):
    server.files["/f.bin"] = DATA
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(DATA + b"junk")
    download(server.url("/f.bin"), dest, sha256=DIGEST, backoff=0, progress=False)
    assert dest.read_bytes() == DATA
    assert server.requests == [("/f.bin", f"bytes={len(DATA) + 4}-"), ("/f.bin", None)]


def test_server_error_is_retried(server, tmp_path):
    server.files["/f.bin"] = DATA
    server.fail_next = 2
    dest = tmp_path / "f.bin"
    download(server.url("/f.bin"), dest, sha256=DIGEST, retries=2, backoff=0, progress=False)
    assert dest.read_bytes() == DATA and len(server.requests) == 3


def test_not_found_fails_at_once_with_manual_instructions(server, tmp_path):
    dest = tmp_path / "datasets" / "gowalla" / "raw" / "loc-gowalla_totalCheckins.txt.gz"
    with pytest.raises(DownloadError) as err:
        download(server.url("/missing.gz"), dest, retries=3, backoff=0, progress=False)
    msg = str(err.value)
    assert "HTTP 404" in msg and server.url("/missing.gz") in msg
    assert str(dest.parent) in msg and "loc-gowalla_totalCheckins.txt.gz" in msg
    assert len(server.requests) == 1 and not dest.exists()


def test_unreachable_server_tells_where_to_put_the_file(tmp_path):
    dest = tmp_path / "datasets" / "lastfm" / "raw" / "lastfm-dataset-1K.tar.gz"
    url = closed_port_url("/lastfm-dataset-1K.tar.gz")
    with pytest.raises(UserError) as err:
        download(url, dest, retries=1, backoff=0, timeout=2, progress=False, hint="or put the member there")
    msg = str(err.value)
    assert url in msg and "after 2 attempts" in msg
    assert f"'{dest.parent}/'" in msg and "'lastfm-dataset-1K.tar.gz'" in msg
    assert "or put the member there" in msg
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()


def test_existing_file_is_verified_without_network(tmp_path):
    dest = tmp_path / "f.bin"
    dest.write_bytes(DATA)
    assert download(closed_port_url(), dest, sha256=DIGEST, progress=False) == dest
    with pytest.raises(ChecksumError, match="delete it"):
        download(closed_port_url(), dest, sha256="f" * 64, progress=False)
    assert dest.exists()  # a file the user placed is never deleted


def test_sha256_file_matches_hashlib(tmp_path):
    p = Path(tmp_path) / "x"
    p.write_bytes(DATA)
    assert sha256_file(p, chunk=1000) == DIGEST


def test_disk_error_is_not_retried_as_a_network_error(server, tmp_path, monkeypatch):
    from sbr_bench.data import download as dl

    def full_disk(f, block, part):
        raise dl._DiskError(f"cannot write {part}: No space left on device")

    monkeypatch.setattr(dl, "_write", full_disk)
    server.files["/f.bin"] = DATA
    with pytest.raises(UserError, match="No space left") as err:
        download(server.url("/f.bin"), tmp_path / "f.bin", retries=3, backoff=0, progress=False)
    assert not isinstance(err.value, DownloadError)
    assert len(server.requests) == 1  # no retry


def test_no_length_and_no_checksum_is_kept_but_marked_unverified(server, tmp_path, capsys):
    server.files["/f.bin"] = DATA
    server.no_length, server.cut_next, server.cut_at = True, 1, 66_666  # closes early: looks complete
    dest = tmp_path / "f.bin"
    download(server.url("/f.bin"), dest, progress=False, backoff=0)
    assert dest.stat().st_size == 66_666 and dest.with_name("f.bin.unverified").exists()
    assert "is unverified" in capsys.readouterr().err
    download(server.url("/f.bin"), dest, progress=False)  # told again while the mark is there
    assert "is unverified" in capsys.readouterr().err
    # with a known checksum the same short body is an error, not a file
    server.cut_next = 1
    with pytest.raises(ChecksumError):
        download(server.url("/f.bin"), tmp_path / "g.bin", sha256=DIGEST, progress=False, backoff=0, retries=0)


def test_a_dripping_server_is_a_stall_and_what_arrived_is_kept(server, tmp_path):
    server.files["/f.bin"] = DATA
    server.drip_after, server.drip_bytes, server.drip_every = 50_000, 20, 0.2
    dest = tmp_path / "f.bin"
    start = time.monotonic()
    with pytest.raises(DownloadError, match="slower than 1000 bytes/s"):
        download(server.url("/f.bin"), dest, sha256=DIGEST, progress=False, retries=0, min_rate=1000,
                 rate_window=1.0, chunk=65536)
    assert time.monotonic() - start < 10
    assert dest.with_name("f.bin.part").stat().st_size >= 50_000  # kept for the resume
    server.drip_after = None
    download(server.url("/f.bin"), dest, sha256=DIGEST, progress=False)
    assert dest.read_bytes() == DATA and server.requests[-1][1] is not None  # resumed with a Range


def test_a_redirect_loop_fails_at_once(server, tmp_path):
    with pytest.raises(DownloadError, match="redirects that never end"):
        download(server.url("/loop"), tmp_path / "x.bin", progress=False, retries=3, backoff=5)
    assert len([r for r in server.requests if r[0] == "/loop"]) <= 11  # urllib's own limit, no retries
