"""Kill it at any instant, resume with ``--train.resume latest``: the result is the uninterrupted run's, bit for bit.

Each scenario runs the real CLI in a fresh process (see ``_zygote.py``) that a fault point SIGKILLs or SIGTERMs at an
exact moment, then resumes it, possibly several times, and compares the finished run with the uninterrupted one:
the SHA-256 of ``model.safetensors``, the optimizer and scheduler state of the last checkpoint, every ``log.jsonl``
record (per-step loss, LRs and the digest of the exact batches, i.e. the sample order and augmentation) and the
epoch metrics. Update / micro-batch numbering: see ``conftest.py``.
"""

from __future__ import annotations

import re
import signal
import subprocess

import pytest

pytestmark = pytest.mark.slow

# id -> (faults of the successive interrupted runs, the step each following run resumes from, config overrides, why)
KILLS = {
    "mid-accumulation": (
        ["after_backward@7"], [2], {},
        "kill -9 after micro-batch 7, half-way through update 4 (mid-epoch, mid-accumulation)"),
    "after-an-update-2-workers": (
        ["after_optimizer_step@3"], [2], {"data": {"num_workers": 2}},
        "kill -9 right after update 3, between checkpoints, with 2 data-loader workers"),
    "two-kills-in-one-epoch": (
        ["after_backward@7", "after_optimizer_step@3"], [2, 4], {},
        "kill -9 twice in epoch 0 (micro-batch 7, then update 5 of the resumed run)"),
    "across-the-epoch-boundary": (
        ["checkpoint_after_weights@3"], [4], {},
        "kill -9 while the end-of-epoch-0 checkpoint is written: the resume replays the epoch's end"),
    "early-next-epoch-2-workers": (
        ["after_backward@11"], [5], {"data": {"num_workers": 2}},
        "kill -9 in epoch 1 before its first checkpoint, with 2 data-loader workers"),
}


def _resumed_from(output: str) -> int:
    found = re.findall(r"hubft: resumed from \S*step-(\d+)", output)
    assert len(found) == 1, output[-2000:]
    return int(found[0])


def _overrides(sections: dict) -> list[str]:
    return [f"--{s}.{k}={v}" for s, values in sections.items() for k, v in values.items()]


@pytest.mark.parametrize("case", list(KILLS))
def test_kill_then_resume_is_bit_identical(case, tmp_path, make_config, hubft_cli, reference, rel, survival):
    faults, resumed_steps, overrides, why = KILLS[case]
    survival(why, "model.safetensors SHA-256, optimizer/scheduler state, per-step losses, LRs and batch digests, "
                  "epoch metrics: identical to the uninterrupted run")
    config = make_config(tmp_path)
    extra = _overrides(overrides)
    first = hubft_cli("finetune", "--config", config, *extra, fault=faults[0])
    assert first.returncode == -signal.SIGKILL, first.output[-3000:]
    for fault, step in zip(faults[1:] + [None], resumed_steps):
        result = hubft_cli("finetune", "--config", config, *extra, "--train.resume", "latest", fault=fault)
        assert _resumed_from(result.output) == step
        assert result.returncode == (-signal.SIGKILL if fault else 0), result.output[-3000:]
    rel.assert_same_run(reference, tmp_path / "run")


def test_external_sigterm_checkpoints_exits_75_and_resumes_bit_identically(tmp_path, make_config, hubft_cli,
                                                                           reference, rel, survival):
    survival("SIGTERM from outside (as a preempting scheduler sends it) to the `hubft` console script, mid-epoch",
             "the update in flight finishes, a complete checkpoint is written, exit code 75; the resume is "
             "bit-identical")
    config = make_config(tmp_path)
    proc = subprocess.Popen([str(rel.HUBFT_BIN), "finetune", "--config", str(config)],
                            env=rel.run_env(HUBFT_FAULT_TRACE="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if re.search(r"HUBFT_STEP 3$", line.rstrip()):  # a progress bar may share the line
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=300)
    output = "".join(seen) + rest
    assert proc.returncode == 75, output[-3000:]
    stopped = int(re.search(r"stopped by SIGTERM at update (\d+)", output).group(1))
    assert 3 <= stopped < rel.UPDATES
    from hubft.train.checkpoint import find_latest_checkpoint

    latest = find_latest_checkpoint(tmp_path / "run" / "checkpoints", report=lambda line: None)
    assert latest is not None and latest.name == f"step-{stopped:08d}"
    assert not (tmp_path / "run" / "model.safetensors").exists()

    result = hubft_cli("finetune", "--config", config, "--train.resume", "latest")
    assert result.returncode == 0, result.output[-3000:]
    assert _resumed_from(result.output) == stopped
    rel.assert_same_run(reference, tmp_path / "run")


def test_sigterm_during_a_checkpoint_write_finishes_it_and_stops(tmp_path, make_config, hubft_cli, reference, rel,
                                                                 survival):
    survival("SIGTERM while a checkpoint is being written (after its weights file)",
             "that checkpoint completes and is the one resumed from (not written twice); exit 75; bit-identical")
    config = make_config(tmp_path)
    first = hubft_cli("finetune", "--config", config, fault="checkpoint_after_weights@2:sigterm")
    assert first.returncode == 75, first.output[-3000:]
    assert "stopped by SIGTERM at update 4" in first.output
    result = hubft_cli("finetune", "--config", config, "--train.resume", "latest")
    assert result.returncode == 0 and _resumed_from(result.output) == 4, result.output[-3000:]
    rel.assert_same_run(reference, tmp_path / "run")


def test_sigterm_at_an_epoch_end_then_kill_while_that_step_is_rewritten(tmp_path, make_config, hubft_cli,
                                                                       reference, rel, survival):
    survival("SIGTERM at the last update of an epoch, then kill -9 of the resumed run while it rewrites that "
             "step's checkpoint with the epoch closed (old copy moved aside, new one not yet renamed)",
             "`latest` recovers the complete new copy; bit-identical")
    config = make_config(tmp_path)
    first = hubft_cli("finetune", "--config", config, fault="after_optimizer_step@5:sigterm")
    assert first.returncode == 75 and "stopped by SIGTERM at update 5" in first.output, first.output[-3000:]
    second = hubft_cli("finetune", "--config", config, "--train.resume", "latest", fault="checkpoint_replacing@1")
    assert second.returncode == -signal.SIGKILL, second.output[-3000:]
    checkpoints = tmp_path / "run" / "checkpoints"
    assert not (checkpoints / "step-00000005").exists()
    result = hubft_cli("finetune", "--config", config, "--train.resume", "latest")
    assert result.returncode == 0, result.output[-3000:]
    assert "recovered checkpoint step-00000005" in result.output
    assert _resumed_from(result.output) == 5
    rel.assert_same_run(reference, tmp_path / "run")
