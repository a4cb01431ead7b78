"""Keep every test hermetic and offline.

huggingface_hub, timm and datasets read their endpoint, cache and token settings once, at import, so they are
set here before anything imports them. ``HF_ENDPOINT`` points at a port on 127.0.0.1 chosen for this session:
nothing listens there unless a test starts hubft's local Hub on it (the ``local_hub`` fixture), so a test that
forgets to can only get "connection refused", never the real Hub.
"""

from __future__ import annotations

import os
import socket
import tempfile


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HUB_PORT = _free_port()
_HF_HOME = tempfile.mkdtemp(prefix="hubft-tests-hf-")
os.environ.update(
    HF_ENDPOINT=f"http://127.0.0.1:{HUB_PORT}",
    HF_TOKEN="",
    HF_HOME=_HF_HOME,
    HF_HUB_CACHE=os.path.join(_HF_HOME, "hub"),
    HF_DATASETS_CACHE=os.path.join(_HF_HOME, "datasets"),
    HF_HUB_DISABLE_XET="1",
    HF_HUB_DISABLE_TELEMETRY="1",
    HF_HUB_DISABLE_PROGRESS_BARS="1",
    HF_UPDATE_DOWNLOAD_COUNTS="0",
    HF_HUB_DISABLE_IMPLICIT_TOKEN="1",
    DO_NOT_TRACK="1",
    TOKENIZERS_PARALLELISM="false",
)
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.pop("HF_DATASETS_OFFLINE", None)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield
