"""Adapter runs end to end: what trains, what the run writes and pushes, who can load it, merging, exact resume.

The backbones are tiny timm models with random weights saved as local "pretrained" sources (timm's
``save_for_hf``, BatchNorm statistics moved by a training-mode pass so that a frozen body can be told apart).
"""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.models import save_for_hf

import hubft
from hubft.faults import FaultInjected
from hubft.hub.card import PLOTS
from hubft.models import is_adapter_model
from hubft.testing import reset_process_state

SOURCES = {"vit": ("test_vit", {"img_size": 32}), "convnext": ("test_convnext", {}), "resnet": ("resnet10t", {})}
# What peft puts between a timm layer and its tensors (see hubft.optim.plain_parameter_name).
PEFT_SEGMENT = re.compile(r"^base_model\.model\.|\.base_layer(?=\.)|\.original_module(?=\.)")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict:
    found = {}
    for key, (arch, kwargs) in SOURCES.items():
        torch.manual_seed(1)
        model = timm.create_model(arch, num_classes=5, **kwargs)
        with torch.no_grad():
            model(torch.randn(4, 3, 32, 32))  # moves the BatchNorm statistics away from their init
        found[key] = tmp_path_factory.mktemp(key)
        save_for_hf(model.eval(), found[key], safe_serialization=True)
    return found


def _config(make_config, out, source, **sections) -> dict:
    config = make_config(out, model={"name": f"local-dir:{source}", "pretrained": True, "adapter": "lora",
                                     "adapter_options": {"r": 4}}, data={"image_size": 32, "eval_fraction": 0.25,
                                                                         "hflip": 0.0})
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return config


def _images(seed: int = 0) -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _logits(model: torch.nn.Module, channels_last: bool = False) -> torch.Tensor:
    x = _images()
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        return model.eval()(x)


def _train(config: dict, dataset) -> hubft.Finetuner:
    ft = hubft.Finetuner(config, dataset=dataset)
    try:
        ft.setup()
        ft.fit()
        ft.save()
    finally:
        ft.close()
        reset_process_state()
    return ft


@pytest.mark.parametrize("family", list(SOURCES))
def test_an_adapter_run_moves_only_the_adapters_and_the_head_and_loads_with_peft_alone(family, sources, tmp_path,
                                                                                     tiny_dataset, make_config):
    from peft import PeftModel

    out = tmp_path / "run"
    config = _config(make_config, out, sources[family], train={"epochs": 1, "max_updates": 3})
    ft = hubft.Finetuner(config, dataset=tiny_dataset)
    ft.setup()
    model = ft.parts.unwrapped_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ft.fit()
    ft.save()
    ft.close()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".lora_" in k or ".modules_to_save." in k for k in changed)
    assert any(".modules_to_save." in k for k in changed) and any(".lora_B." in k for k in changed)
    # The body, BatchNorm statistics included, is still the source's bit for bit.
    source = load_file(sources[family] / "model.safetensors")
    body = {PEFT_SEGMENT.sub("", k): v for k, v in after.items() if ".lora_" not in k and ".modules_to_save." not in k
            and not PEFT_SEGMENT.sub("", k).startswith(("head", "fc"))}
    assert body.keys() <= source.keys() and all(torch.equal(v, source[k]) for k, v in body.items())

    assert {"adapter_model.safetensors", "adapter_config.json"} <= {p.name for p in out.iterdir()}
    assert not (out / "model.safetensors").exists() and not (out / "config.json").exists()
    base = timm.create_model(f"local-dir:{sources[family]}", pretrained=True, num_classes=4)
    alone = PeftModel.from_pretrained(base, str(out))
    cl = ft.parts.channels_last
    assert torch.equal(_logits(alone, cl), _logits(model, cl))
    facts = json.loads((out / "metrics.json").read_text())["run"]
    assert facts["adapter"]["kind"] == "lora" and 0 < facts["trainable_parameters"] < facts["parameters"] / 2


def test_every_schedule_gives_an_adapter_run_the_curves_of_a_full_run(sources, tmp_path, make_config):
    """Schedules act on the groups, whatever their parameters: the groups an adapter run shares with a full run
    (here all but the body's no-decay group, which holds only norms and biases) get the same LR at every update."""
    config = _config(make_config, tmp_path, sources["vit"], optim={"head_lr": 0.05, "weight_decay": 0.05},
                     schedule={"warmup_steps": 3})
    curves = hubft.lr_curve_for_config(hubft.config_from_dict(config), updates_per_epoch=6, num_classes=4)
    assert set(curves) == {"body.decay", "head.decay", "head.no_decay"}
    model = hubft.create_model(f"local-dir:{sources['vit']}", num_classes=4, pretrained=False)
    plain = hubft.param_groups(model, lr=0.01, head_lr=0.05)
    adapter = hubft.param_groups(hubft.add_adapter(model, "lora", r=4), lr=0.01, head_lr=0.05)
    for name in hubft.list_schedulers():
        kwargs = dict(schedule=name, total_updates=12, updates_per_epoch=6, warmup_steps=3)
        ours, full = hubft.lr_curve(adapter, **kwargs), hubft.lr_curve(plain, **kwargs)
        assert set(ours) == {"body.decay", "head.decay", "head.no_decay"}, name
        assert all(ours[g] == full[g] for g in ours), name


def test_ema_precision_accumulation_head_lr_and_layer_decay_all_run_with_an_adapter(sources, tmp_path, tiny_dataset,
                                                                                   make_config):
    from peft import get_peft_model_state_dict

    config = _config(make_config, tmp_path / "run", sources["resnet"],
                     optim={"head_lr": 0.05, "layer_decay": 0.8, "clip_grad_norm": 1.0, "weight_decay": 0.01},
                     schedule={"name": "step", "warmup_steps": 2},
                     train={"epochs": 1, "max_updates": 3, "ema": True, "ema_decay": 0.5, "save_ema": True,
                            "grad_accum_steps": 2, "mixed_precision": "bf16", "batch_size": 4})
    ft = _train(config, tiny_dataset)
    saved = load_file(tmp_path / "run" / "adapter_model.safetensors")
    ema = get_peft_model_state_dict(ft.parts.ema.module)
    raw = get_peft_model_state_dict(ft.parts.unwrapped_model)
    assert saved.keys() == ema.keys() and all(torch.equal(saved[k], ema[k]) for k in saved)
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)  # the EMA weights were saved, not the raw ones
    groups = {g["name"]: g["lr"] for g in json.loads((tmp_path / "run" / "metrics.json").read_text())["run"][
        "param_groups"]}
    assert groups["head.decay"] == 0.05 and any(n.startswith("layer_") for n in groups)


def test_an_interrupted_adapter_run_resumes_bit_identical(sources, tmp_path, tiny_dataset, make_config, monkeypatch):
    # 36 train images / batch 4 = 9 updates; checkpoints every 2 updates; die at update 5, resume from 4.
    sections = dict(train={"batch_size": 4, "checkpoint_every": 2, "epochs": 1},
                    optim={"lr": 0.01, "head_lr": 0.03})
    straight = _config(make_config, tmp_path / "straight", sources["resnet"], **sections)
    straight["data"].update(hflip=0.5, re_prob=0.5, image_size=16)
    straight["model"].update(drop_rate=0.2, adapter_options={"r": 4, "dropout": 0.1})
    resumed = json.loads(json.dumps(straight))
    resumed["train"]["output_dir"] = str(tmp_path / "resumed")
    hubft.finetune(straight, dataset=tiny_dataset)
    reset_process_state()
    monkeypatch.setenv("HUBFT_FAULT", "after_optimizer_step@5:raise")
    with pytest.raises(FaultInjected):
        hubft.finetune(resumed, dataset=tiny_dataset)
    monkeypatch.delenv("HUBFT_FAULT")
    reset_process_state()
    resumed["train"]["resume"] = "latest"
    hubft.finetune(resumed, dataset=tiny_dataset)

    a, b = tmp_path / "straight", tmp_path / "resumed"
    digest = [hashlib.sha256((d / "adapter_model.safetensors").read_bytes()).hexdigest() for d in (a, b)]
    assert digest[0] == digest[1]
    steps = [[(r["step"], r["loss"]) for r in map(json.loads, (d / "log.jsonl").read_text().splitlines())
              if r["type"] == "step"] for d in (a, b)]
    assert steps[0] == steps[1] and len(steps[0]) == 9


@pytest.mark.slow
def test_push_load_anywhere_and_merge(hub, api, repo_id, sources, tmp_path, tiny_dataset, make_config, send_hf_token):
    from huggingface_hub import ModelCard
    from peft import PeftModel

    from hubft.cli import main
    from hubft.hub.push import push_to_hub

    send_hf_token(hub.token)
    base_repo, merged_repo, adapter_repo = (f"{repo_id}-{kind}" for kind in ("base", "merged", "adapter"))
    api.create_repo(base_repo)
    base_sha = api.upload_folder(folder_path=str(sources["vit"]), repo_id=base_repo).oid
    out = tmp_path / "run"
    config = _config(make_config, out, sources["vit"], hub={"push": True, "repo_id": merged_repo,
                                                            "merge_adapter": True}, train={"epochs": 1})
    config["model"]["name"] = f"hf-hub:{base_repo}"
    ft = hubft.Finetuner(config, dataset=tiny_dataset)
    ft.setup()
    ft.fit()
    ft.save()
    ft.push()
    ft.close()
    trained = _logits(ft.parts.unwrapped_model)

    # hub.merge_adapter pushed the merged model: a plain timm repo.
    assert "model.safetensors" in api.list_repo_files(merged_repo)
    merged = timm.create_model(f"hf-hub:{merged_repo}", pretrained=True)
    torch.testing.assert_close(_logits(merged), trained, atol=1e-5, rtol=0)

    # The adapter itself, pushed: never the base weights; peft alone and hubft load it.
    push_to_hub(out, adapter_repo)
    files = set(api.list_repo_files(adapter_repo))
    assert files == {".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors",
                     "config.yaml", "metrics.json", *PLOTS}
    pushed = json.loads(open(api.hf_hub_download(adapter_repo, "adapter_config.json")).read())
    assert (pushed["base_model_name_or_path"], pushed["revision"]) == (base_repo, base_sha)
    card = ModelCard.load(adapter_repo)
    assert (card.data.library_name, card.data.base_model) == ("peft", base_repo) and "lora" in card.data.tags
    # The card's snippet is the load done below, and it states the trainable share.
    assert f'timm.create_model("hf-hub:{base_repo}", pretrained=True, num_classes=4)' in card.text
    assert f'PeftModel.from_pretrained(base, "{adapter_repo}")' in card.text
    assert re.search(r"\| trainable parameters \| [\d,]+ of [\d,]+ \(\d+\.\d\d%\) \|", card.text)
    base = timm.create_model(f"hf-hub:{base_repo}", pretrained=True, num_classes=4)
    assert torch.equal(_logits(PeftModel.from_pretrained(base, adapter_repo)), trained)
    loaded = hubft.from_pretrained(f"hf-hub:{adapter_repo}")
    assert is_adapter_model(loaded) and torch.equal(_logits(loaded), trained)

    # hubft merge from the Hub, pushed again.
    assert main(["merge", adapter_repo, str(tmp_path / "merged"), "--push", f"{merged_repo}-cli"]) == 0
    cli = timm.create_model(f"hf-hub:{merged_repo}-cli", pretrained=True)
    torch.testing.assert_close(_logits(cli), trained, atol=1e-5, rtol=0)
    assert (tmp_path / "merged" / "metrics.json").is_file()
    assert ModelCard.load(f"{merged_repo}-cli").data.library_name == "timm"


def test_merge_refuses_a_full_model(tmp_path, capsys):
    from hubft.cli import main

    model = hubft.create_model("resnet10t", label_names=["a", "b"], pretrained=False)
    hubft.save_pretrained(model, tmp_path / "full")
    assert main(["merge", str(tmp_path / "full"), str(tmp_path / "out")]) == 2
    assert "holds a full model (config.json + model.safetensors), not an adapter" in capsys.readouterr().err


def test_a_full_run_after_an_adapter_run_leaves_no_adapter_behind_and_resumes_none(sources, tmp_path, tiny_dataset,
                                                                                   make_config):
    from hubft.errors import CheckpointError

    config = _config(make_config, tmp_path / "run", sources["resnet"], train={"epochs": 1, "max_updates": 1})
    hubft.finetune(config, dataset=tiny_dataset)
    reset_process_state()
    full = json.loads(json.dumps(config))
    del full["model"]["adapter"], full["model"]["adapter_options"]
    hubft.finetune(full, dataset=tiny_dataset)
    reset_process_state()
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"model.safetensors", "config.json"} <= names and not names & {"adapter_model.safetensors",
                                                                         "adapter_config.json"}
    config["train"]["resume"] = "latest"
    with pytest.raises(CheckpointError, match="model.adapter: checkpoint None vs now 'lora'"):
        hubft.finetune(config, dataset=tiny_dataset)


@pytest.mark.slow
def test_two_processes_train_the_adapter_one_process_trains_on_the_joint_batch(sources, tmp_path, free_port):
    """DDP over a peft model: 2 processes x batch 4 give the adapter and head that 1 process x batch 8 gives (SGD,
    whose update is linear in the gradient; see test_equivalence.py for why the tolerance)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from hubft.data import write_image_folder

    repo = Path(__file__).resolve().parents[2]
    images = write_image_folder(tmp_path / "images", num_classes=4, per_class=8, size=16)
    runs = {}
    for processes, batch in ((2, 4), (1, 8)):
        out = tmp_path / f"p{processes}"
        config = {"model": {"name": f"local-dir:{sources['vit']}", "adapter": "lora", "adapter_options": {"r": 4}},
                  "data": {"path": str(images), "image_size": 32, "eval_fraction": 0.25, "hflip": 0.0},
                  "optim": {"name": "SGD", "lr": 0.1, "head_lr": 0.2, "weight_decay": 0.0},
                  "train": {"epochs": 1, "batch_size": batch, "output_dir": str(out), "cpu": True}}
        if processes == 1:
            hubft.finetune(config)
            reset_process_state()
        else:
            (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
            # PYTHONPATH: the recipe imports the hubft of this checkout, whichever one is installed.
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(repo), *filter(None, [
                os.environ.get("PYTHONPATH")])])}
            proc = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2",
                                   "--master_port", str(free_port()), "recipes/finetune.py", "--config",
                                   str(tmp_path / "config.yaml")], cwd=repo, capture_output=True, text=True,
                                  timeout=600, env=env)
            assert proc.returncode == 0, proc.stderr[-3000:]
        runs[processes] = load_file(out / "adapter_model.safetensors")
        assert json.loads((out / "metrics.json").read_text())["run"]["processes"] == processes
    assert runs[1].keys() == runs[2].keys()
    for key in runs[1]:
        torch.testing.assert_close(runs[2][key], runs[1][key], atol=1e-5, rtol=1e-4, msg=key)
    assert any(float(v.abs().max()) > 1e-3 for k, v in runs[1].items() if ".lora_B." in k)  # the adapter trained
