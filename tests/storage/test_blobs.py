"""Checkpoint files on an object store: put, list, get, delete through the store's filesystem."""

import io

import torch

from storage.blobs import BlobStore
from tests.storage.test_s3 import s3_endpoint, s3_store  # noqa: F401  (fixtures)


def test_blobs_on_s3(s3_store):  # noqa: F811
    blobs = BlobStore(s3_store)
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
