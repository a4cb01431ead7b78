"""Fixtures for the reliability campaign: a tiny deterministic run, a fast CLI launcher, run comparisons, and the
records the survival and error tables in ``docs/`` are generated from (``tests/reliability/report.py``).

Every run here trains ``test_resnet`` (a timm ResNet with BatchNorm) from scratch on 16 px images, on one CPU
thread, with augmentation and dropout on, so that bit-identical results mean something: 18 training images, batch 2,
2 micro-batches per update -> 9 micro-batches and 5 updates per epoch, 2 epochs, a checkpoint every 2 updates.
Checkpoint writes of the uninterrupted run, in order: #1 step-2, #2 step-4, #3 step-5 (end of epoch 0), #4 step-6,
#5 step-8, #6 step-10 (end of epoch 1).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import selectors
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
HUBFT_BIN = Path(sys.executable).parent / "hubft"

BASE = {
    "model": {"name": "test_resnet", "pretrained": False, "drop_rate": 0.1},
    "data": {"image_size": 16, "eval_fraction": 0.25, "hflip": 0.5, "re_prob": 0.25},
    "optim": {"lr": 0.01, "weight_decay": 0.01},
    "schedule": {"name": "cosine", "warmup_steps": 2},
    "train": {"epochs": 2, "batch_size": 2, "grad_accum_steps": 2, "checkpoint_every": 2, "keep_checkpoints": 2,
              "log_every": 1, "cpu": True, "seed": 0},
}
UPDATES = 10


@pytest.fixture(autouse=True)
def _fresh_process_state():
    """In-process runs share Accelerate's singletons and the fault counters: each test starts clean."""
    from hubft.testing import reset_process_state

    reset_process_state()
    yield
    reset_process_state()


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Path:
    from hubft.data import write_image_folder

    return write_image_folder(tmp_path_factory.mktemp("images"), num_classes=3, per_class=8, size=16)


def run_env(**extra: str) -> dict:
    """The environment of every CLI run: one thread (results must not depend on the machine), batch digests on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBFT_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", HUBFT_TRACE_INPUTS="1")
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def make_config(images):
    """``make_config(dir, **sections)`` writes ``dir/config.yaml`` (BASE + overrides, output in ``dir/run``)."""

    def make(directory: Path, **sections: dict) -> Path:
        cfg = copy.deepcopy(BASE)
        cfg["data"]["path"] = str(images)
        cfg["train"]["output_dir"] = str(Path(directory) / "run")
        for section, values in sections.items():
            cfg.setdefault(section, {}).update(values)
        Path(directory).mkdir(parents=True, exist_ok=True)
        path = Path(directory) / "config.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return make


@dataclass
class Result:
    returncode: int
    output: str


class Launcher:
    """Runs ``hubft`` commands in children forked from ``_zygote.py`` (see there); one command at a time."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.count = 0
        self.proc = subprocess.Popen([sys.executable, str(HERE / "_zygote.py")], cwd=REPO, env=run_env(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __call__(self, *argv: str, fault: str | None = None, timeout: float = 240, **env: str) -> Result:
        self.count += 1
        log = self.workdir / f"run-{self.count}.log"
        extra = {"HUBFT_FAULT": fault, **env} if fault else env
        request = {"argv": [str(a) for a in argv], "env": run_env(**extra), "cwd": str(REPO), "log": str(log)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                self.proc.kill()
                raise TimeoutError(f"hubft {' '.join(argv)} ran over {timeout} s; log: {log.read_text()[-3000:]}")
        answer = json.loads(self.proc.stdout.readline())
        return Result(answer["returncode"], log.read_text(errors="replace"))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="session")
def hubft_cli(tmp_path_factory):
    """``hubft_cli(*argv, fault="point@n:action", **env) -> Result``: the CLI in a fresh (forked) process."""
    launcher = Launcher(tmp_path_factory.mktemp("cli-logs"))
    yield launcher
    launcher.close()


def run_console_script(*argv: str, timeout: float = 300, **env: str) -> Result:
    """The installed ``hubft`` console script itself, in a plain subprocess."""
    proc = subprocess.run([str(HUBFT_BIN), *map(str, argv)], cwd=REPO, env=run_env(**env), capture_output=True,
                          text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout + proc.stderr)


@pytest.fixture(scope="session")
def reference(tmp_path_factory, make_config, hubft_cli) -> Path:
    """The uninterrupted run every interrupted one is compared with; returns its output directory."""
    directory = tmp_path_factory.mktemp("reference")
    result = hubft_cli("finetune", "--config", make_config(directory))
    assert result.returncode == 0, result.output[-3000:]
    return directory / "run"


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, images) -> Path:
    """A finished run made in-process (quicker than ``reference``; for tests that need checkpoints, not exactness)."""
    import hubft
    from hubft.testing import reset_process_state

    cfg = copy.deepcopy(BASE)
    cfg["data"]["path"] = str(images)
    cfg["train"]["output_dir"] = str(tmp_path_factory.mktemp("finished") / "run")
    try:
        hubft.finetune(cfg)
    finally:
        reset_process_state()
    return Path(cfg["train"]["output_dir"])


# -- comparisons ----------------------------------------------------------------------------------------------------
def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def log_records(run: Path) -> list[dict]:
    """log.jsonl without the wall-clock field: what must be identical between two runs."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    for r in records:
        r.pop("images_per_s", None)
        r.pop("time", None)
    return records


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_run(expected: Path, actual: Path) -> None:
    """Bit-identical weights, optimizer state, per-step losses / LRs / batches, epoch metrics and history."""
    assert sha256(actual / "model.safetensors") == sha256(expected / "model.safetensors"), "weights differ"
    want, got = log_records(expected), log_records(actual)
    steps = [r for r in want if r["type"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, UPDATES + 1))
    assert all(r.get("inputs") for r in steps), "batch digests missing (HUBFT_TRACE_INPUTS)"
    assert got == want, "log.jsonl differs (losses, LRs, batch order or epoch records)"
    last = f"checkpoints/step-{UPDATES:08d}"
    for name in ("optimizer.bin", "scheduler.pt"):
        a = torch.load(expected / last / name, weights_only=True)
        b = torch.load(actual / last / name, weights_only=True)
        assert _equal(a, b), f"{name} differs"
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (expected, actual))
    assert ma["history"] == mb["history"] and ma["final"] == mb["final"]


def _report():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_hubft_reliability_report_conftest", HERE / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REPORT = _report()


def documented_rows(key: str) -> list[list[str]]:
    """The rows of a generated table in docs/ (``"survival"`` or ``"errors"``), each a list of its cells as written."""
    import re

    start, end = REPORT.MARKERS[key]
    text = REPORT.DOCS[key].read_text()
    section = text[text.index(start):text.index(end)] if start in text and end in text else ""
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("|---")]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows[1:]]


# Set by report.py while it regenerates the tables from a run: the run compares nothing with what it rewrites.
REGENERATING = "HUBFT_REGENERATING_DOCS"


def check_documented_error(case: dict) -> None:
    """The bad-input case is in docs/errors.md as it behaves now: a changed message or exit code fails the suite
    (regenerate the table with ``python tests/reliability/report.py``)."""
    if os.environ.get(REGENERATING) == "1":
        return
    row = next((r for r in documented_rows("errors") if r[1] == f"`{case['id']}`"), None)
    assert row is not None, f"{case['id']} is not in docs/errors.md: run python tests/reliability/report.py"
    assert row[4] == REPORT._cell(case["message"]), \
        f"docs/errors.md shows another message for {case['id']}: run python tests/reliability/report.py"
    assert row[3].split()[0] == str(case["exit"]), f"docs/errors.md shows another exit code for {case['id']}"


@pytest.fixture
def survival(record_property, request):
    """``survival(fault, holds)``: a row of the "What hubft survives" table in docs/reliability.md (see report.py),
    which must already show it as written here: a changed or new row fails until the table is regenerated."""

    def record(fault: str, holds: str) -> None:
        record_property("survival", json.dumps({"fault": fault, "holds": holds}))
        if os.environ.get(REGENERATING) == "1":
            return
        test = request.node.nodeid.removeprefix("tests/reliability/")
        wanted = [REPORT._cell(fault), REPORT._cell(holds), f"`{REPORT._cell(test)}`"]
        rows = [[r[0], r[1], r[3]] for r in documented_rows("survival")]
        assert wanted in rows, f"docs/reliability.md lacks this row of {test}: run python tests/reliability/report.py"

    return record


@pytest.fixture(scope="session")
def rel():
    """The helpers above, for the test modules (which cannot import this conftest)."""
    from types import SimpleNamespace

    return SimpleNamespace(BASE=BASE, UPDATES=UPDATES, HUBFT_BIN=HUBFT_BIN, sha256=sha256, log_records=log_records,
                           assert_same_run=assert_same_run, console=run_console_script, run_env=run_env,
                           check_documented_error=check_documented_error)
