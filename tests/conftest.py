"""Keep every test hermetic and offline.

huggingface_hub, timm and datasets read their endpoint, cache and token settings once, at import, so they are
set here before anything imports them. ``HF_ENDPOINT`` points at a port on 127.0.0.1 chosen for this session:
nothing listens there unless a test starts hubft's local Hub on it (the ``local_hub`` fixture), so a test that
forgets to can only get "connection refused", never the real Hub.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import time
import uuid


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


@pytest.fixture(scope="session")
def local_hub(tmp_path_factory: pytest.TempPathFactory):
    """One local Hub for the whole session, on the port HF_ENDPOINT names (clients read it at import)."""
    from hubft.testing import LocalHub

    with LocalHub(tmp_path_factory.mktemp("local-hub"), port=HUB_PORT) as hub:
        yield hub


@pytest.fixture
def hub(local_hub):
    """The session hub, up, without faults, and with an empty request log when the test starts."""
    local_hub.set_faults(None)
    local_hub.up()
    local_hub.requests.clear()
    yield local_hub
    local_hub.set_faults(None)
    local_hub.up()


@pytest.fixture
def api(hub):
    """A client with the hub's write token (HF_TOKEN is blanked, so nothing is implicit)."""
    from huggingface_hub import HfApi

    return HfApi(token=hub.token)


@pytest.fixture
def repo_id(hub, request: pytest.FixtureRequest) -> str:
    """A repo id no other test uses: the test's name plus a random suffix, in the hub user's namespace."""
    name = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:50].strip("-")
    return f"{hub.user}/{name}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def free_port():
    """A function that returns a free TCP port on 127.0.0.1 (torchrun's and accelerate launch's rendezvous)."""
    return _free_port


@pytest.fixture(scope="session")
def free_port_factory():
    """:func:`free_port` for fixtures of a wider scope than one test."""
    return _free_port


@pytest.fixture
def send_hf_token(monkeypatch):
    """``send_hf_token(token)``: let huggingface_hub send ``token`` (as HF_TOKEN) on calls that pass none.

    For code under test that takes no token (``create_model``, ``load_data``): the suite blanks HF_TOKEN and turns
    implicit tokens off so that nothing is sent by accident, and this undoes both for one test.
    """
    from huggingface_hub import constants

    def send(token: str) -> None:
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
        monkeypatch.setenv("HF_TOKEN", token)

    return send


class _BackoffClock:
    """Stands in for the ``time`` module inside huggingface_hub's HTTP layer: ``sleep`` records the pause instead."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)

    def __getattr__(self, name: str):
        return getattr(time, name)


@pytest.fixture
def no_backoff(monkeypatch) -> _BackoffClock:
    """Skip huggingface_hub's pauses between retries, and record them.

    Against a hub that is down the client retries each download 5 times with 1-8 s pauses (about 23 s) before
    giving up; the requests and the outcome are the same without the pauses. Only the client's backoff is touched,
    not the hub or anything the test waits on. ``pauses`` shows that retries happened.
    """
    import huggingface_hub.utils._http as http

    clock = _BackoffClock()
    monkeypatch.setattr(http, "time", clock)
    return clock
