"""Checkpoints under fire: kill -9 at every write point, corrupted files, a full disk.

A checkpoint is written into a temporary directory, hashed into ``manifest.json`` and renamed (see
``hubft/train/checkpoint.py``). Whatever happens, a complete checkpoint survives, ``resume: latest`` picks the newest
one that verifies and says why it passed over the others, and no resume is ever silently inexact.
"""

from __future__ import annotations

import json
import shutil
import signal
import struct

import pytest

from hubft.errors import CheckpointError
from hubft.train.checkpoint import (MANIFEST, find_latest_checkpoint, recover_interrupted_checkpoints,
                                    verify_checkpoint)

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


def test_a_manifest_lists_every_file_with_its_hash(finished_run):
    manifest = json.loads((finished_run / "checkpoints" / "step-00000010" / MANIFEST).read_text())
    files = {p.name for p in (finished_run / "checkpoints" / "step-00000010").iterdir()} - {MANIFEST}
    assert set(manifest["files"]) == files
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl", "scheduler.pt",
            "hubft_state.json"} <= files
    assert all(len(meta["sha256"]) == 64 and meta["size"] > 0 for meta in manifest["files"].values())
