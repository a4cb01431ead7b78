"""Checkpoints under fire: kill -9 at every write point, corrupted files, a full disk.

A checkpoint is written into a temporary directory, hashed into ``manifest.json`` and renamed (see
``hubft/train/checkpoint.py``). Whatever happens, a complete checkpoint survives, ``resume: latest`` picks the newest
one that verifies and says why it passed over the others, and no resume is ever silently inexact.
"""

from __future__ import annotations

import errno
import json
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from hubft.errors import CheckpointError, TrainingError
from hubft.train.checkpoint import (MANIFEST, find_latest_checkpoint, recover_interrupted_checkpoints,
                                    verify_checkpoint, write_checkpoint)

# Checkpoint write #4 (step-6) with keep_checkpoints=1: before it, step-5 is the only checkpoint on disk.
# point -> (the checkpoint `latest` resumes from, why)
WRITE_POINTS = {
    "checkpoint_start": (5, "temporary directory created, nothing written yet"),
    "checkpoint_after_weights": (5, "weights written (Accelerate's model.safetensors)"),
    "checkpoint_after_optimizer": (5, "optimizer state written (optimizer.bin)"),
    "checkpoint_after_accelerate_state": (5, "RNG states written (random_states_0.pkl)"),
    "checkpoint_after_train_state": (5, "scheduler and hubft's training state written"),
    "checkpoint_before_manifest": (5, "every file written, manifest not yet"),
    "checkpoint_before_rename": (6, "manifest written, directory not yet renamed (recovered on resume)"),
    "checkpoint_after_rename": (6, "renamed, older checkpoint not yet pruned"),
    "checkpoint_after_prune": (6, "older checkpoint pruned"),
}


def _steps(checkpoints) -> list[str]:
    return sorted(p.name for p in checkpoints.iterdir()) if checkpoints.is_dir() else []


@pytest.mark.slow
@pytest.mark.parametrize("point", list(WRITE_POINTS))
def test_kill_at_every_checkpoint_write_point_keeps_a_complete_checkpoint(point, tmp_path, make_config, hubft_cli,
                                                                         reference, rel, survival):
    expected, why = WRITE_POINTS[point]
    survival(f"kill -9 during a checkpoint save, keep_checkpoints 1: {why} (`{point}`)",
             f"a complete checkpoint survives; `latest` resumes from step-{expected} and logs what it skipped; "
             "bit-identical")
    config = make_config(tmp_path, train={"keep_checkpoints": 1})
    killed = hubft_cli("finetune", "--config", config, fault=f"{point}@4")
    assert killed.returncode == -signal.SIGKILL, killed.output[-3000:]
    checkpoints = tmp_path / "run" / "checkpoints"
    on_disk = _steps(checkpoints)
    complete = [n for n in on_disk if n.startswith("step-") and (checkpoints / n / MANIFEST).is_file()]
    assert complete, f"no complete checkpoint survived: {on_disk}"
    for name in complete:
        verify_checkpoint(checkpoints / name)

    result = hubft_cli("finetune", "--config", config, "--train.resume", "latest")
    assert result.returncode == 0, result.output[-3000:]
    assert f"hubft: resumed from {checkpoints / f'step-{expected:08d}'}" in result.output
    if any(n.startswith(".tmp-") for n in on_disk):
        assert ("hubft: ignoring .tmp-step-00000006" in result.output
                or "hubft: recovered checkpoint step-00000006" in result.output), result.output[-3000:]
    rel.assert_same_run(reference, tmp_path / "run")


def _tensor_data_offset(path) -> int:
    """Where a safetensors file's tensor bytes start: after the 8-byte header length and the JSON header."""
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


def _flip_tensor_byte(path) -> None:
    data = bytearray(path.read_bytes())
    i = _tensor_data_offset(path) + (len(data) - _tensor_data_offset(path)) // 2
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# id -> (file of the newest checkpoint, damage, the words the error must contain, why)
CORRUPTIONS = {
    "flipped-tensor-byte": ("model.safetensors", _flip_tensor_byte, "is corrupt (SHA-256 does not match",
                            "one bit flipped inside the tensor data of model.safetensors"),
    "truncated-optimizer": ("optimizer.bin", _truncate, "is truncated or altered",
                            "optimizer.bin cut to half its size"),
    "missing-rng-file": ("random_states_0.pkl", lambda p: p.unlink(), "is missing",
                         "random_states_0.pkl deleted (Accelerate alone would resume silently without it)"),
    "missing-manifest": (MANIFEST, lambda p: p.unlink(), "is incomplete (no manifest.json)",
                         "manifest.json deleted"),
    "corrupt-train-state": ("hubft_state.json", lambda p: p.write_text("{}"), "is truncated or altered",
                            "hubft_state.json rewritten"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_a_corrupted_checkpoint_is_named_and_latest_falls_back(case, tmp_path, finished_run, survival):
    name, damage, words, why = CORRUPTIONS[case]
    survival(f"corrupted newest checkpoint: {why}",
             "verification names the file; `latest` skips it, saying why, and picks the previous complete one")
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    newest = run / "checkpoints" / "step-00000010"
    damage(newest / name)
    with pytest.raises(CheckpointError, match="step-00000010") as err:
        verify_checkpoint(newest)
    assert words in str(err.value) and (name == MANIFEST or name in str(err.value))
    said = []
    recover_interrupted_checkpoints(run / "checkpoints", report=said.append)
    assert find_latest_checkpoint(run / "checkpoints", report=said.append) == run / "checkpoints" / "step-00000008"
    assert len(said) == 1 and "skipping checkpoint step-00000010" in said[0] and words in said[0]


@pytest.mark.slow
def test_resume_from_a_corrupted_checkpoint_is_refused_and_latest_resumes_exactly(tmp_path, reference, make_config,
                                                                                  hubft_cli, rel, survival):
    survival("resume pointed explicitly at a corrupted checkpoint, then `resume: latest` over it",
             "exit 2 with the file named, nothing trained; `latest` resumes from the previous checkpoint, "
             "bit-identical")
    config = make_config(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    newest = run / "checkpoints" / "step-00000010"
    _flip_tensor_byte(newest / "model.safetensors")
    before = (run / "log.jsonl").read_bytes()

    refused = hubft_cli("finetune", "--config", config, "--train.resume", newest)
    assert refused.returncode == 2, refused.output[-3000:]
    error = [line for line in refused.output.splitlines() if line.startswith("hubft: error:")]
    assert len(error) == 1 and "model.safetensors" in error[0] and "corrupt" in error[0]
    assert "Traceback" not in refused.output
    assert (run / "log.jsonl").read_bytes() == before

    (run / "model.safetensors").unlink()
    resumed = hubft_cli("finetune", "--config", config, "--train.resume", "latest")
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert "skipping checkpoint step-00000010" in resumed.output
    assert f"resumed from {run / 'checkpoints' / 'step-00000008'}" in resumed.output
    rel.assert_same_run(reference, run)


# point@n -> (the message's checkpoint, latest complete, why); keep_checkpoints 1, so one complete checkpoint at most
DISK_FULL = {
    "checkpoint_after_optimizer@4": ("could not write checkpoint step-00000006", "step-00000005",
                                     "ENOSPC while a checkpoint's optimizer state is written"),
    "checkpoint_before_rename@4": ("could not write checkpoint step-00000006", "step-00000005",
                                   "ENOSPC at the last moment of a checkpoint save"),
    "before_save@1": ("writing the finished model failed", "step-00000010",
                      "ENOSPC while the finished model is written"),
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(DISK_FULL))
def test_disk_full_stops_cleanly_and_a_later_resume_finishes(fault, tmp_path, make_config, hubft_cli, reference, rel,
                                                             survival):
    words, latest, why = DISK_FULL[fault]
    survival(f"disk full: {why}", "exit 3 with a one-line message; temporary files removed; the previous "
                                  "checkpoint verifies; a later resume is bit-identical")
    config = make_config(tmp_path, train={"keep_checkpoints": 1})
    full = hubft_cli("finetune", "--config", config, fault=f"{fault}:enospc")
    assert full.returncode == 3, full.output[-3000:]
    error = [line for line in full.output.splitlines() if line.startswith("hubft: error:")]
    assert len(error) == 1 and words in error[0] and "the disk is full" in error[0], full.output[-3000:]
    assert "Traceback" not in full.output and "resume with --train.resume latest" in error[0]
    checkpoints = tmp_path / "run" / "checkpoints"
    assert _steps(checkpoints) == [latest]
    verify_checkpoint(checkpoints / latest)
    assert not list((tmp_path / "run").glob(".*.tmp")), "a temporary output file was left behind"

    resumed = hubft_cli("finetune", "--config", config, "--train.resume", "latest")
    assert resumed.returncode == 0, resumed.output[-3000:]
    rel.assert_same_run(reference, tmp_path / "run")


# Two processes, 9 micro-batches of 2 split between them, 2 per update: 3 updates per epoch, 1 epoch. Checkpoint
# writes: #1 step-2 (every 2 updates), #2 step-3 (end of the epoch); keep_checkpoints 2.
# fault (on one process only) -> (rank, the message's words, checkpoints left, why). The main process failing while
# the others wait is checked in-process ("this-process-renaming" below): each 2-process run costs ~15 s on 2 cores.
DISK_FULL_ON_ONE_PROCESS = {
    "checkpoint_after_accelerate_state@2": (
        1, "could not write checkpoint step-00000003", ["step-00000002"],
        "on process 1 (not the main one) while it writes its RNG state into a checkpoint"),
    "before_save@1": (
        1, "writing the finished model failed", ["step-00000002", "step-00000003"],
        "on process 1 when the finished model is about to be written"),
}


def _launch_two_processes(argv: list[str], env: dict, logs) -> list[subprocess.Popen]:
    """Start the two processes of a CPU process group directly, as torchrun would but without its agent.

    A launcher's agent terminates the other processes as soon as one exits: it would hide a process left waiting
    in a collective, and give it SIGTERM's exit code instead of its own.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in (0, 1):
        dist = dict(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                    MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        with open(logs / f"rank-{rank}.log", "w") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", "hubft.cli", *argv], env={**env, **dist},
                                          stdout=log, stderr=subprocess.STDOUT))
    return procs


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(DISK_FULL_ON_ONE_PROCESS))
def test_disk_full_on_one_of_two_processes_stops_both_at_once(fault, tmp_path, make_config, rel, survival):
    rank, words, left, why = DISK_FULL_ON_ONE_PROCESS[fault]
    survival(f"disk full in a 2-process run, {why} (`{fault}`, that process only)",
             "both processes exit 3 at once (neither waits for the process-group timeout) with the same one-line "
             "message; temporary files removed; the checkpoints written before verify")
    config = make_config(tmp_path, train={"epochs": 1})
    env = rel.run_env(HUBFT_FAULT=f"{fault}:enospc", HUBFT_FAULT_RANK=str(rank))
    procs = _launch_two_processes(["finetune", "--config", str(config)], env, tmp_path)
    # A hang guard, not a timing assertion: the run takes a few seconds; a process left waiting would take 30 min.
    deadline = time.monotonic() + 180
    try:
        codes = [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    except subprocess.TimeoutExpired:
        codes = None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = [(tmp_path / f"rank-{r}.log").read_text(errors="replace") for r in (0, 1)]
    assert codes == [3, 3], f"exit codes {codes}\n" + "\n".join(f"-- rank {r}:\n{t[-2500:]}"
                                                              for r, t in enumerate(logs))
    errors = [[line for line in text.splitlines() if line.startswith("hubft: error:")] for text in logs]
    assert len(errors[0]) == 1 and errors[0] == errors[1], errors
    message = errors[0][0]
    assert words in message and "the disk is full" in message and "resume with --train.resume latest" in message
    if fault.startswith("checkpoint_"):
        assert f"on process {rank}" in message and f"the latest complete checkpoint is {left[-1]}" in message
    assert all("Traceback" not in text for text in logs)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert _steps(checkpoints) == left, "a temporary or incomplete checkpoint was left behind"
    for name in left:
        verify_checkpoint(checkpoints / name)
    assert not list((tmp_path / "run").glob("*.safetensors")) and not list((tmp_path / "run").glob(".*.tmp"))


def _fill(tmp, fails: bool = False) -> None:
    if fails:
        raise OSError(errno.ENOSPC, "No space left on device")
    (tmp / "weights").write_bytes(b"w")


# case -> (process that fails, how, what this process (the main one) passes to the exchanges)
AGREEMENT = {
    "other-process-writing": (1, {}, [0, 0]),
    "this-process-writing": (0, {"fails": True}, [0, errno.ENOSPC]),
    "this-process-renaming": (0, {"HUBFT_FAULT": "checkpoint_before_rename:enospc"}, [0, 0, errno.ENOSPC]),
}


@pytest.mark.parametrize("case", list(AGREEMENT))
def test_a_failed_write_on_any_process_is_agreed_before_any_process_raises(case, tmp_path, monkeypatch):
    failing, how, passed = AGREEMENT[case]
    root = tmp_path / "checkpoints"
    write_checkpoint(root, 1, _fill, exchange=lambda code: [code, 0])
    if "HUBFT_FAULT" in how:
        monkeypatch.setenv("HUBFT_FAULT", how["HUBFT_FAULT"])
    seen = []

    def exchange(code: int) -> list[int]:  # process 1 reports a full disk at the end of the write stage
        seen.append(code)
        return [code, errno.ENOSPC if failing == 1 and len(seen) == 2 else 0]

    with pytest.raises(TrainingError, match=rf"could not write checkpoint step-00000002 .*the disk is full "
                                            rf"\(No space left on device on process {failing}\).* step-00000001"):
        write_checkpoint(root, 2, lambda tmp: _fill(tmp, how.get("fails", False)), exchange=exchange)
    assert seen == passed, "a process raised before the others learnt of the failure, or went on after it"
    assert _steps(root) == ["step-00000001"]
    verify_checkpoint(root / "step-00000001")


def test_a_manifest_lists_every_file_with_its_hash(finished_run):
    manifest = json.loads((finished_run / "checkpoints" / "step-00000010" / MANIFEST).read_text())
    files = {p.name for p in (finished_run / "checkpoints" / "step-00000010").iterdir()} - {MANIFEST}
    assert set(manifest["files"]) == files
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl", "scheduler.pt",
            "hubft_state.json"} <= files
    assert all(len(meta["sha256"]) == 64 and meta["size"] > 0 for meta in manifest["files"].values())
