"""train.reuse_host_memory: glibc's malloc keeps freed memory for the next update."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from hubft.train import host_memory
from hubft.train.host_memory import MMAP_THRESHOLD, TRIM_THRESHOLD, reuse_host_memory

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


class FakeMallopt:
    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def __call__(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.answer


@pytest.mark.parametrize(("setting", "device", "applied"), [
    ("auto", CPU, True), ("auto", CUDA, False), (True, CPU, True), (True, CUDA, True), (False, CPU, False),
    (False, CUDA, False),
])
def test_setting_and_device_decide_whether_malloc_is_tuned(monkeypatch, setting, device, applied):
    fake = FakeMallopt()
    monkeypatch.setattr(host_memory, "_glibc_mallopt", lambda: fake)
    assert reuse_host_memory(setting, device) is applied
    # Both thresholds or neither: the trim threshold alone would pin the mmap threshold at glibc's 128 KiB.
    assert sorted(fake.calls) == (sorted([(-3, MMAP_THRESHOLD), (-1, TRIM_THRESHOLD)]) if applied else [])


def test_nothing_is_applied_off_glibc_or_when_mallopt_refuses(monkeypatch):
    monkeypatch.setattr(host_memory, "_glibc_mallopt", lambda: None)
    assert reuse_host_memory(True, CPU) is False
    monkeypatch.setattr(host_memory, "_glibc_mallopt", lambda: FakeMallopt(answer=0))
    assert reuse_host_memory(True, CPU) is False


_PROBE = textwrap.dedent("""
    import os, sys, torch
    from hubft.train.host_memory import reuse_host_memory

    def resident_mib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    if sys.argv[1] == "on":
        assert reuse_host_memory("auto", torch.device("cpu"))
    block = torch.ones(24 * 2**20 // 4)  # 24 MiB, touched: resident
    peak = resident_mib()
    del block
    print(peak - resident_mib())  # MiB handed back to the OS by the free
""")


@pytest.mark.slow
def test_freed_memory_stays_in_the_process_only_with_the_setting():
    if host_memory._glibc_mallopt() is None:  # not glibc: nothing to tune, and the run says so
        assert reuse_host_memory(True, CPU) is False
        return

    # Fresh processes: glibc's adaptive threshold would otherwise remember this test process's earlier blocks.
    def given_back(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return float(out.stdout.strip().splitlines()[-1])

    assert given_back("off") > 20  # glibc's default: a block this size is mmapped, and unmapped again on free
    assert given_back("on") < 4  # kept for the next update's allocations


def test_an_unknown_setting_is_a_config_error(tmp_path, tiny_dataset, make_config):
    import hubft
    from hubft.errors import ConfigError

    with pytest.raises(ConfigError, match="train.reuse_host_memory"):
        hubft.Finetuner(make_config(tmp_path, train={"reuse_host_memory": "sometimes"}), dataset=tiny_dataset)


@pytest.mark.parametrize(("setting", "expected"), [("auto", True), (False, False)])
def test_a_cpu_run_reports_what_it_applied(tmp_path, tiny_dataset, make_config, monkeypatch, setting, expected):
    import hubft

    fake = FakeMallopt()
    monkeypatch.setattr(host_memory, "_glibc_mallopt", lambda: fake)
    ft = hubft.Finetuner(make_config(tmp_path, train={"reuse_host_memory": setting}), dataset=tiny_dataset)
    ft.setup()
    assert ft.reuses_host_memory is expected
    assert bool(fake.calls) is expected


class FakeTrim:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, pad: int) -> int:
        self.calls.append(pad)
        return 1


@pytest.mark.parametrize(("setting", "releases"), [("auto", 1 + 2 * 2 + 1), (False, 0)])
def test_kept_memory_is_released_at_every_phase_boundary(tmp_path, tiny_dataset, make_config, monkeypatch, setting,
                                                         releases):
    """Before the first update, before each epoch's evaluation and checkpoint, before the final files: only while
    the setting is in force (2 epochs here)."""
    import hubft

    trim = FakeTrim()
    monkeypatch.setattr(host_memory, "_glibc_mallopt", lambda: FakeMallopt())
    monkeypatch.setattr(host_memory, "_glibc_malloc_trim", lambda: trim)
    hubft.finetune(make_config(tmp_path, train={"reuse_host_memory": setting}), dataset=tiny_dataset)
    assert trim.calls == [0] * releases


def test_release_is_a_no_op_off_glibc(monkeypatch):
    monkeypatch.setattr(host_memory, "_glibc_malloc_trim", lambda: None)
    assert host_memory.release_host_memory() is False
    if host_memory._glibc() is not None:
        monkeypatch.undo()
        assert host_memory.release_host_memory() is True
