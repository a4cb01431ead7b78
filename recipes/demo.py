# The whole point of hubft in a few minutes, offline: `make demo`.
#
#   1. start hubft's local Hub (a Hub-compatible server persisting under demo-output/hub)
#   2. publish scikit-learn's handwritten digits there as a dataset, with datasets' own push_to_hub
#   3. make a "pretrained backbone": a small timm model trained on digits 0-4 only, pushed with its card
#      (it stands in for an ImageNet backbone, which cannot be downloaded here)
#   4. `accelerate launch recipes/finetune.py --config recipes/configs/digits.yaml`: pull backbone and data from
#      the Hub, keep digits 5-9 with 10 labelled images each, new head, fine-tune, push with a model card
#   5. load the pushed model with plain timm and compare its held-out accuracy with a from-scratch baseline
#   6. `hubft eval` and `hubft predict` on the pushed model, as its users would run them
import os
import socket
import subprocess
import sys
from pathlib import Path

OUT = Path("demo-output")
CONFIG = "recipes/configs/digits.yaml"

# huggingface_hub, timm and datasets read HF_ENDPOINT once, at import: pick the port and set it before anything.
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
os.environ.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str((OUT / "hf-home").resolve()),
                  HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", HF_UPDATE_DOWNLOAD_COUNTS="0")


import hubft  # noqa: E402
from hubft.data import disable_datasets_extra_hosts, load_digits_dataset  # noqa: E402
from hubft.testing import LocalHub  # noqa: E402


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


with LocalHub(OUT / "hub", port=port, user="hubft-demo") as hub:
    # 1. The local Hub: everything below uses the real huggingface_hub / datasets / timm clients over HTTP.
    os.environ["HF_TOKEN"] = hub.token  # the local server's own write token, never written to any file
    banner(f"1. local Hub running at {hub.endpoint}")

    # 2. The dataset, published the way anyone publishes one.
    banner("2. publishing scikit-learn's handwritten digits as hubft-demo/optdigits")
    disable_datasets_extra_hosts()
    load_digits_dataset().push_to_hub("hubft-demo/optdigits")

    # 3. The "pretrained" backbone: trained on digits 0-4 only, then shared like any model.
    banner("3. pretraining a backbone on digits 0-4 -> hubft-demo/digits-0-4-backbone")
    backbone = {
        "model": {"name": "resnet10t", "pretrained": False},
        "data": {"name": "hubft-demo/optdigits", "eval_split": "test", "classes": ["0", "1", "2", "3", "4"],
                 "image_size": 32, "hflip": 0.0, "scale": [0.7, 1.0]},
        "optim": {"lr": 0.003},
        "schedule": {"name": "cosine", "warmup_steps": 10},
        "train": {"epochs": 4, "batch_size": 32, "output_dir": str(OUT / "backbone-0-4")},
        "hub": {"push": True, "repo_id": "hubft-demo/digits-0-4-backbone"},
    }
    pre = hubft.finetune(backbone)
    print(f"backbone accuracy on held-out digits 0-4: {pre.final['accuracy']:.3f}")

    # 4. The main job, exactly as a user runs it.
    banner(f"4. accelerate launch recipes/finetune.py --config {CONFIG}")
    subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    "recipes/finetune.py", "--config", CONFIG], check=True)

    # A from-scratch baseline with the same budget: same architecture, data, schedule and epochs.
    banner("baseline: the same fine-tune from random weights")
    scratch = hubft.load_config(CONFIG, {"model.name": "resnet10t", "model.pretrained": "false",
                                         "model.freeze": "false", "model.unfreeze_epoch": "null",
                                         "hub.push": "false", "train.output_dir": str(OUT / "scratch-5-9")})
    baseline = hubft.finetune(scratch)

    # 5. The pushed model, loaded by timm alone, on the held-out digits 5-9.
    banner("5. timm.create_model('hf-hub:hubft-demo/digits-5-9', pretrained=True)")
    import timm
    import torch
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model("hf-hub:hubft-demo/digits-5-9", pretrained=True).eval()
    names = model.pretrained_cfg["label_names"]
    transform = create_transform(**resolve_data_config(model=model))
    test = load_digits_dataset()["test"]
    keep = [i for i, y in enumerate(test["label"]) if str(y) in names]
    correct = 0
    with torch.no_grad():
        for i in keep:
            row = test[i]
            x = transform(row["image"].convert("RGB")).unsqueeze(0)
            correct += names[int(model(x).argmax())] == str(row["label"])
    accuracy = correct / len(keep)

    print(f"\n{'':38}held-out accuracy on digits 5-9 ({len(keep)} images)")
    print(f"fine-tuned from the 0-4 backbone (timm): {accuracy:.3f}")
    print(f"same budget from scratch:                {baseline.final['accuracy']:.3f}")
    print(f"\nmodel card: {hub.endpoint}/hubft-demo/digits-5-9 (local copy: {OUT / 'digits-5-9' / 'README.md'})")
    print(f"plots: {', '.join(str(p) for p in sorted((OUT / 'digits-5-9').glob('*.png')))}")
    if accuracy <= baseline.final["accuracy"]:
        sys.exit("demo: the fine-tuned model did not beat the from-scratch baseline")

    # 6. After training: the pushed model scored and run with hubft's own commands, by its repo id.
    banner("6. hubft eval / hubft predict on hubft-demo/digits-5-9")
    samples = OUT / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    for i in keep[:6]:
        test[i]["image"].save(samples / f"test-{i}-digit-{test[i]['label']}.png")
    hubft_cli = [sys.executable, "-m", "hubft.cli"]
    subprocess.run([*hubft_cli, "eval", "hubft-demo/digits-5-9", "--data.name", "hubft-demo/optdigits",
                    "--data.eval_split", "test", "--data.classes", "[5, 6, 7, 8, 9]", "-o", str(OUT / "eval")],
                   check=True)
    subprocess.run([*hubft_cli, "predict", "hubft-demo/digits-5-9", str(samples), "--top-k", "2"], check=True)
