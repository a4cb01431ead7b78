"""Kill it at any instant, resume with ``--train.resume latest``: the result is the uninterrupted run's, bit for bit.

Most scenarios run ``hubft.cli.main`` in a fresh process forked from a pre-imported interpreter (``_zygote.py``,
which saves the ~8 s of imports per run) that a fault point SIGKILLs or SIGTERMs at an exact moment; the external
SIGTERM and SIGKILL tests run the installed ``hubft`` console script itself and signal it from the test, and
``test_the_zygote_runs_what_the_console_script_runs`` pins the two launchers to the same entry point. Each then
resumes, possibly several times, and compares the finished run with the uninterrupted one: the SHA-256 of
``model.safetensors``, the optimizer and scheduler state of the last checkpoint, every ``log.jsonl`` record (per-step
loss, LRs and the digest of the exact batches, i.e. the sample order and augmentation) and the epoch metrics.
Update / micro-batch numbering: see ``conftest.py``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import signal
import subprocess
import threading
from pathlib import Path

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
    "between-evaluation-and-epoch-checkpoint": (
        ["epoch_end@1"], [4], {},
        "kill -9 after epoch 0 is evaluated and logged, before its checkpoint (`epoch_end`)"),
    "before-the-final-outputs": (
        ["before_save@1"], [10], {},
        "kill -9 once training ended, before the final model and outputs are written (`before_save`)"),
}
# What only a finished run writes: none of it may exist after a kill.
FINAL_OUTPUTS = ("model.safetensors", "config.json", "metrics.json", "README.md", "loss_curve.png")


def _resumed_from(output: str) -> int:
    found = re.findall(r"hubft: resumed from \S*step-(\d+)", output)
    assert len(found) == 1, output[-2000:]
    return int(found[0])


def _overrides(sections: dict) -> list[str]:
    return [f"--{s}.{k}={v}" for s, values in sections.items() for k, v in values.items()]


def _console_until_step(rel, config, step: int) -> tuple[subprocess.Popen, list[str]]:
    """Start ``hubft finetune`` (the console script) and return once it has printed ``HUBFT_STEP <step>``.

    The marker is printed after the update's log record and before its periodic checkpoint; the child keeps running.
    """
    # Ctrl-C as from a terminal: a suite started in the background (`make test &`) hands its children SIGINT
    # ignored, which Python keeps, and the child would never see the interrupt.
    proc = subprocess.Popen([str(rel.HUBFT_BIN), "finetune", "--config", str(config)],
                            env=rel.run_env(HUBFT_FAULT_TRACE="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # A guard against a child that hangs without printing, not a synchronisation: the marker is what we wait for.
    watchdog = threading.Timer(300, proc.kill)
    watchdog.start()
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if re.search(rf"HUBFT_STEP {step}$", line.rstrip()):  # a progress bar may share the line
                return proc, seen
    finally:
        watchdog.cancel()
    proc.wait()
    raise AssertionError(f"no HUBFT_STEP {step} before exit {proc.returncode}: {''.join(seen)[-3000:]}")


@pytest.mark.parametrize("case", list(KILLS))
def test_kill_then_resume_is_bit_identical(case, tmp_path, make_config, hubft_cli, reference, rel, survival):
    faults, resumed_steps, overrides, why = KILLS[case]
    survival(why, "model.safetensors SHA-256, optimizer/scheduler state, per-step losses, LRs and batch digests, "
                  "epoch metrics: identical to the uninterrupted run")
    config = make_config(tmp_path)
    extra = _overrides(overrides)
    first = hubft_cli("finetune", "--config", config, *extra, fault=faults[0])
    assert first.returncode == -signal.SIGKILL, first.output[-3000:]
    assert [name for name in FINAL_OUTPUTS if (tmp_path / "run" / name).exists()] == []
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
    proc, seen = _console_until_step(rel, config, 3)
    proc.send_signal(signal.SIGTERM)
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


def test_external_sigkill_of_the_console_script_mid_epoch_resumes_bit_identically(tmp_path, make_config, reference,
                                                                                 rel, survival):
    survival("kill -9 sent from outside (`os.kill`) to the `hubft` console script once it printed update 3 of 10 "
             "(mid-epoch 0, between checkpoints), landing wherever the run then is; resumed with the console script",
             "model.safetensors SHA-256, optimizer/scheduler state, per-step losses, LRs and batch digests, "
             "epoch metrics: identical to the uninterrupted run")
    config = make_config(tmp_path)
    # Update 3 is neither checkpointed nor the end of epoch 0 (updates 1-5); the step-2 checkpoint is complete before
    # its marker. Seven updates, an evaluation and five checkpoint writes remain, seconds of work for a kill sent
    # within a millisecond of the marker: it lands in the run, and the assertions below check that it did.
    proc, seen = _console_until_step(rel, config, 3)
    os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate(timeout=60)
    output = "".join(seen) + rest
    assert proc.returncode == -signal.SIGKILL, output[-3000:]
    assert "hubft: finished" not in output and not (tmp_path / "run" / "model.safetensors").exists(), \
        "the kill landed after the run ended"

    result = rel.console("finetune", "--config", config, "--train.resume=latest")
    assert result.returncode == 0, result.output[-3000:]
    # Where the kill landed decides the checkpoint resumed from (step-2, or a later one written before the kill).
    assert 2 <= _resumed_from(result.output) < rel.UPDATES
    rel.assert_same_run(reference, tmp_path / "run")


def test_the_zygote_runs_what_the_console_script_runs(tmp_path, make_config, hubft_cli, rel):
    # The kill tests trust the zygote to be the `hubft` command minus the imports: same function, same argv, same
    # environment. Pin the function to pyproject's entry point, then compare the two launchers' behaviour.
    import tomllib  # Python 3.11+

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    target = pyproject["project"]["scripts"]["hubft"]
    (installed,) = importlib.metadata.entry_points(group="console_scripts", name="hubft")
    assert installed.value == target, "the installed `hubft` script is stale: reinstall the package"
    zygote = ast.parse((Path(__file__).with_name("_zygote.py")).read_text())
    child = next(n for n in zygote.body if isinstance(n, ast.FunctionDef) and n.name == "_child")
    (returned,) = [n.value for n in ast.walk(child) if isinstance(n, ast.Return)]
    assert isinstance(returned, ast.Call) and ast.unparse(returned.func) == target.replace(":", "."), \
        f"_zygote.py runs {ast.unparse(returned)}, the `hubft` console script runs {target}"

    config = make_config(tmp_path)
    # argv, environment, exit code, a line that shows the command was understood as meant
    cases = [
        (("config", "--config", config, "--train.epochs=3", "--optim.lr", "0.5"), {}, 0, "  epochs: 3\n"),
        # HUBFT_DEBUG is read from the command's environment: the traceback shows that it arrived.
        (("finetune", "--config", config, "--train.epoch", "3"), {"HUBFT_DEBUG": "1"}, 2, "Traceback"),
        (("push",), {}, 2, "usage: hubft push"),
    ]
    for argv, env, code, shows in cases:
        console, forked = rel.console(*argv, **env), hubft_cli(*argv, **env)
        assert console.returncode == forked.returncode == code, (argv, console.output, forked.output)
        assert shows in console.output and console.output == forked.output, (argv, console.output, forked.output)


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


def test_a_push_killed_mid_upload_changes_nothing_and_a_later_push_completes(finished_run, hub, api, repo_id,
                                                                            tmp_path, rel, survival):
    import shutil

    from hubft.hub import UPLOAD_ALLOWLIST

    survival("kill -9 of `hubft push` after its files are uploaded and before the commit (`push_after_upload`)",
             "the run directory is unchanged and the repo holds no commit of it; a later `hubft push` makes exactly "
             "one commit with the run's files")
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    # The console script itself: huggingface_hub reads HF_TOKEN when it is imported, which the zygote did already.
    env = {"HF_TOKEN": hub.token, "HF_HUB_DISABLE_IMPLICIT_TOKEN": "0"}
    killed = rel.console("push", str(run), repo_id, HUBFT_FAULT="push_after_upload@1", **env)
    assert killed.returncode == -signal.SIGKILL, killed.output[-3000:]
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert "model.safetensors" not in api.list_repo_files(repo_id)
    commits = len(api.list_repo_commits(repo_id))

    pushed = rel.console("push", str(run), repo_id, **env)
    assert pushed.returncode == 0, pushed.output[-3000:]
    assert len(api.list_repo_commits(repo_id)) == commits + 1
    files = set(api.list_repo_files(repo_id)) - {".gitattributes"}
    assert files == {name for name in UPLOAD_ALLOWLIST if (run / name).is_file()}
    downloaded = api.hf_hub_download(repo_id, "model.safetensors", local_dir=tmp_path / "pulled")
    assert Path(downloaded).read_bytes() == before["model.safetensors"]


def test_ctrl_c_exits_130_and_an_internal_error_exits_1_through_the_console_script(tmp_path, make_config, rel):
    proc, seen = _console_until_step(rel, make_config(tmp_path / "interrupted"), 2)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    output = "".join(seen) + rest
    assert proc.returncode == 130, output[-3000:]
    assert "hubft: interrupted" in output and "Traceback" not in output

    crashed = rel.console("finetune", "--config", make_config(tmp_path / "crashed"),
                          HUBFT_FAULT="after_optimizer_step@1:raise")
    assert crashed.returncode == 1, crashed.output[-3000:]
    lines = [line for line in crashed.output.splitlines() if line.startswith("hubft: internal error:")]
    assert len(lines) == 1 and "FaultInjected" in lines[0] and "--debug" in lines[0]
    assert "Traceback" not in crashed.output
