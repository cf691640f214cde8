"""Kernel tests run the chunked torch path with tiny chunks, so that every test crosses many
chunk boundaries (the default chunk would hold all rows of these small inputs)."""
import pytest

from megatron_omni.kernels.common import chunking


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(chunking, "CHUNK_BYTES", 7 * 4 * 1000)  # 7 rows of 1000 fp32 columns
