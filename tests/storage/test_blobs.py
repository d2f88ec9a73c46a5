"""Checkpoint files on an object store: put, list, get, delete through the store's filesystem.

The S3-compatible server is the test environment's own moto (``python -m moto.server``):
an older ``moto_server`` found first on PATH (5.2.1 here) fails pyarrow's multipart uploads.
"""

import io
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from storage import EmbeddingStore
from storage.blobs import BlobStore
from tests.storage.test_s3 import free_port

pytest.importorskip("moto", reason="moto[server] (a dev extra) provides the S3 server")


@pytest.fixture(scope="module")
def s3_root():
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                pytest.fail("the S3 test server did not start")
            time.sleep(0.2)
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/stratalens", method="PUT"))
    options = {
        "aws_endpoint": endpoint,
        "allow_http": "true",
        "aws_access_key_id": "test",
        "aws_secret_access_key": "test",
        "aws_region": "us-east-1",
    }
    yield EmbeddingStore("s3://stratalens/blobs", storage_options=options)
    server.terminate()
    server.wait(timeout=10)


def test_blobs_on_s3(s3_root):
    blobs = BlobStore(s3_root)
    assert blobs.list("checkpoints/e") == []
    buffer = io.BytesIO()
    torch.save({"w": torch.arange(4)}, buffer)
    blobs.put("checkpoints/e/r/epoch=1.pt", buffer.getvalue())
    blobs.put("checkpoints/e/r/epoch=2.pt", b"x")
    assert blobs.list("checkpoints/e/r") == ["epoch=1.pt", "epoch=2.pt"]
    state = torch.load(io.BytesIO(blobs.get("checkpoints/e/r/epoch=1.pt")), weights_only=True)
    assert torch.equal(state["w"], torch.arange(4))
    blobs.delete("checkpoints/e/r/epoch=2.pt")
    assert blobs.list("checkpoints/e/r") == ["epoch=1.pt"]
    blobs.delete_tree("checkpoints/e")
    assert blobs.list("checkpoints/e/r") == [] and not blobs.exists("checkpoints/e/r/epoch=1.pt")
