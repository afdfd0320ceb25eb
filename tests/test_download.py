"""The download cache: resume with HTTP Range, md5 check, unpack once, one-line errors.

Only a local HTTP server on 127.0.0.1 and an unreachable local port are contacted.
"""

import hashlib
import http.server
import io
import tarfile
import threading
import time

import pytest

from msctr.data.download import MARKER, Archive, download, fetch, fingerprint, unpack
from msctr.errors import UserError


def tarball() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in {"KuaiRand-Pure/data/a.csv": "x,y\n1,2\n" * 5000}.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


PAYLOAD = tarball()


class Server:
    """A tiny file server that honours (or, with ignore_range, ignores) Range requests."""

    def __init__(self, payload: bytes, ignore_range: bool = False) -> None:
        self.ranges: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                start = 0
                if rng and not ignore_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/*")
                else:
                    self.send_response(200)
                body = payload[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/KuaiRand-Pure.tar.gz"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def archive(url: str, md5: str | None = None) -> Archive:
    return Archive(
        dataset="kuairand",
        filename="KuaiRand-Pure.tar.gz",
        url=url,
        md5=md5 or hashlib.md5(PAYLOAD).hexdigest(),
        page="https://zenodo.org/records/10439422",
        raw_dir_hint="msctr prepare kuairand --variant pure --raw-dir <unpacked folder>",
    )


def test_resumes_a_partial_download_with_a_range_request(tmp_path):
    server = Server(PAYLOAD)
    try:
        folder = tmp_path / "kuairand"
        folder.mkdir()
        half = len(PAYLOAD) // 2
        (folder / "KuaiRand-Pure.tar.gz.part").write_bytes(PAYLOAD[:half])
        seen = []
        path = download(archive(server.url), folder, progress=lambda d, t: seen.append((d, t)))
        assert path.read_bytes() == PAYLOAD
        assert server.ranges == [f"bytes={half}-"]
        assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
        assert not (folder / "KuaiRand-Pure.tar.gz.part").exists()
    finally:
        server.close()


def test_restarts_when_the_server_ignores_range(tmp_path):
    server = Server(PAYLOAD, ignore_range=True)
    try:
        folder = tmp_path / "kuairand"
        folder.mkdir()
        (folder / "KuaiRand-Pure.tar.gz.part").write_bytes(b"garbage that must not be kept")
        path = download(archive(server.url), folder)
        assert path.read_bytes() == PAYLOAD
    finally:
        server.close()


def test_fetch_unpacks_once_and_then_needs_no_network(tmp_path):
    server = Server(PAYLOAD)
    try:
        root = fetch(archive(server.url), cache_dir=tmp_path)
    finally:
        server.close()
    assert (root / "KuaiRand-Pure" / "data" / "a.csv").is_file()
    assert (root / MARKER).read_text().strip() == hashlib.md5(PAYLOAD).hexdigest()
    # the server is gone: the verified, unpacked cache is reused
    again = fetch(archive("http://127.0.0.1:9/KuaiRand-Pure.tar.gz"), cache_dir=tmp_path)
    assert again == root


def test_md5_mismatch_is_a_one_line_error(tmp_path):
    folder = tmp_path / "kuairand"
    folder.mkdir()
    (folder / "KuaiRand-Pure.tar.gz").write_bytes(PAYLOAD[:-10] + b"0123456789")
    with pytest.raises(UserError) as e:
        fetch(archive("http://127.0.0.1:9/x"), cache_dir=tmp_path)
    msg = str(e.value)
    assert "corrupt" in msg and "md5" in msg and "--raw-dir" in msg and "\n" not in msg
    assert not (folder / "KuaiRand-Pure.tar.gz").exists()  # never reused
    assert (folder / "KuaiRand-Pure.tar.gz.corrupt").exists()


def test_no_network_fails_fast_with_manual_instructions(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(UserError) as e:
        fetch(archive("http://127.0.0.1:9/KuaiRand-Pure.tar.gz"), cache_dir=tmp_path, timeout=5)
    msg = str(e.value)
    assert time.perf_counter() - t0 < 5
    assert "cannot download KuaiRand-Pure.tar.gz" in msg and "no network" in msg
    assert "zenodo.org/records/10439422" in msg and "--raw-dir" in msg and "\n" not in msg


def test_a_corrupt_tarball_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tarball at all")
    with pytest.raises(UserError, match="cannot unpack"):
        unpack(archive("http://127.0.0.1:9/x"), bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_fingerprint_sees_content_changes(tmp_path):
    a = tmp_path / "a.csv"
    a.write_bytes(b"1,2\n" * 10)
    before = fingerprint([a])
    assert fingerprint([a]) == before
    a.write_bytes(b"1,3\n" * 10)
    assert fingerprint([a]) != before
