"""The upload size limit holds while the body arrives, whatever Content-Length says (or when it is absent)."""

from __future__ import annotations

import json
import select
import socket
import threading
import time

import pytest
import uvicorn

from tests.studio.conftest import RECORDS
from tunelab.studio.app import create_app
from tunelab.studio.paths import Settings

BOUNDARY = "tunelabboundary"


def _multipart(name: str, content: bytes) -> bytes:
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + content + f"\r\n--{BOUNDARY}--\r\n".encode()


HEADERS = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def test_a_client_that_understates_content_length_is_cut_off(client, settings):
    big = _multipart("big.json", b"[" + b'{"text": "x"},' * 200_000 + b'{"text": "x"}]')  # ~2.8 MB, limit 1 MB
    r = client.post("/api/datasets", content=big, headers={**HEADERS, "content-length": "100"})
    assert r.status_code == 413 and "larger than the upload limit of 1 MB" in r.json()["error"]
    assert list(settings.datasets.iterdir()) == []  # the partial spool file is gone


def test_a_file_just_under_the_limit_is_accepted_and_kept_byte_for_byte(client, settings):
    rows = [{"instruction": "q" * 400, "output": "a" * 400, "n": i} for i in range(1200)]
    data = "\n".join(json.dumps(r) for r in rows).encode()  # ~0.99 MB of JSONL
    assert len(data) < settings.max_upload_bytes
    r = client.post("/api/datasets", content=_multipart("near.jsonl", data), headers=HEADERS)
    assert r.status_code == 200, r.text
    assert (settings.datasets / "near.jsonl").read_bytes() == data


def test_malformed_uploads_say_how_to_send_them(client, settings):
    r = client.post("/api/datasets", content=b"just bytes", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "multipart/form-data in a field named 'file'" in r.json()["error"]
    other = _multipart("x.json", json.dumps(RECORDS).encode()).replace(b'name="file"', b'name="other"')
    r = client.post("/api/datasets", content=other, headers=HEADERS)
    assert r.status_code == 400 and "no complete 'file' field" in r.json()["error"]
    cut = _multipart("x.json", json.dumps(RECORDS).encode())[:-30]
    r = client.post("/api/datasets", content=cut, headers=HEADERS)
    assert r.status_code == 400 and "no complete 'file' field" in r.json()["error"]
    assert list(settings.datasets.iterdir()) == []


@pytest.fixture()
def live(tmp_path):
    """A real studio over HTTP (uvicorn on a free loopback port), job watcher off."""
    settings = Settings(data_dir=tmp_path / "studio", max_upload_mb=1.0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(settings, start_worker=False), host="127.0.0.1", port=port,
                                        log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield port, settings
    srv.should_exit = True
    thread.join(timeout=10)


def _chunked_upload(port: int, total: int, chunk: int = 64 * 1024) -> tuple[bytes, int]:
    """POST a multipart body in chunked transfer encoding (no Content-Length at all), `total` bytes of file
    content; stop sending as soon as the server answers. Returns (response, bytes of content sent)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.sendall(f"POST /api/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                 f"boundary={BOUNDARY}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())

    def send(data: bytes) -> None:
        sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    head = _multipart("endless.jsonl", b"").split(b"\r\n--" + BOUNDARY.encode() + b"--")[0]
    send(head)
    sent, line = 0, b'{"text": "' + b"x" * 100 + b'"}\n'
    try:
        while sent < total:
            if select.select([sock], [], [], 0)[0]:
                break  # the server has answered
            piece = line * (chunk // len(line))
            send(piece)
            sent += len(piece)
        response = b""
        sock.settimeout(10)
        while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            response += data
    except (BrokenPipeError, ConnectionResetError):
        response = sock.recv(65536) if select.select([sock], [], [], 1)[0] else b""
    finally:
        sock.close()
    return response, sent


def test_a_chunked_upload_without_content_length_is_stopped_near_the_limit(live):
    port, settings = live
    response, sent = _chunked_upload(port, total=50 * 1024 * 1024)  # would be 50 MB; the limit is 1 MB
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b"larger than the upload limit of 1 MB" in response
    # refused while receiving: the answer came long before the 50 MB were sent (what was sent beyond
    # the limit sat in the two kernels' socket buffers, a few MB on loopback)
    assert sent < 20 * 1024 * 1024
    time.sleep(0.2)
    assert list(settings.datasets.iterdir()) == []
