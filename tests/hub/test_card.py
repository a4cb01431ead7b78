"""The model card: metadata that huggingface_hub parses back, a body that describes the run, local validation.

Run directories here are written by hand (a saved ``test_resnet`` plus the metrics and config files a fine-tune
writes), so each case costs milliseconds; the card of a real fine-tune is checked in ``test_finetune_hub.py``.
"""

from __future__ import annotations

import json

import pytest
import yaml

import hubft
from hubft.errors import HubError
from hubft.hub.card import PLOTS, model_card_data, render_model_card, validate_model_card, write_model_card

SHA = "0123456789abcdef0123456789abcdef01234567"
LABELS = ["cat", "dog", "fox", "owl", "a|b"]

DATASETS = {
    "hub": {"kind": "hub", "dataset": "someone/pets", "revision": "main", "revision_sha": SHA,
            "train_split": "train", "eval_split": "validation", "eval_fraction": None},
    "imagefolder": {"kind": "imagefolder", "dataset": "/home/alice/private/pets-images", "revision": None,
                    "revision_sha": None, "train_split": "train", "eval_split": None, "eval_fraction": 0.2},
    "python": {"kind": "python", "dataset": None, "revision": None, "revision_sha": None, "train_split": "train",
               "eval_split": None, "eval_fraction": 0.25},
}


def _final(**extra) -> dict:
    return {"num_samples": 20, "accuracy": 0.85, "top5": 1.0, "f1_macro": 0.8125, "loss": 0.42,
            "per_class_accuracy": {n: 0.8 for n in LABELS}, "confusion_matrix": [[4] * 5] * 5, **extra}


def _facts(dataset: dict, **extra) -> dict:
    return {
        "base_model": {"source": "hf-hub:someone/base", "kind": "hub", "repo_id": "someone/base", "revision": SHA[::-1],
                       "pretrained": True, "head_reset": True},
        "dataset": dataset, "label_names": LABELS, "multi_label": False, "train_examples": 80, "eval_examples": 20,
        "loss": "cross_entropy", "loss_options": {"label_smoothing": 0.1}, "optimizer": "adamw",
        "param_groups": [{"name": "body.decay", "lr": 1e-4, "weight_decay": 0.05},
                         {"name": "head.decay", "lr": 1e-3, "weight_decay": 0.05}],
        "schedule": "cosine", "warmup_steps": 7, "epochs": 3, "updates": 30, "batch_size_per_process": 16,
        "grad_accum_steps": 2, "processes": 4, "effective_batch_size": 128, "mixed_precision": "bf16",
        "channels_last": True, "device": "cuda", "seed": 1234,
        "augmentation": {"auto_augment": "rand-m9-mstd0.5", "re_prob": 0.25, "re_mode": "pixel", "hflip": 0.5,
                         "mixup_alpha": 0.0, "cutmix_alpha": 0.0},
        "regularisation": {"drop_rate": None, "drop_path_rate": 0.1, "weight_decay": 0.05, "ema": True},
        "frameworks": {"hubft": "0.1.0", "timm": "9.9.9"},
        **extra,
    }


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("saved")
    hubft.save_pretrained(hubft.create_model("test_resnet", label_names=LABELS, pretrained=False), out)
    return out


def _run_dir(tmp_path, saved_model, *, dataset="hub", final=None, facts=None, config=None, plots=True):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("model.safetensors", "config.json"):
        (out / name).write_bytes((saved_model / name).read_bytes())
    facts = facts or _facts(DATASETS[dataset])
    (out / "metrics.json").write_text(json.dumps({
        "final": final or _final(), "best": {"epoch": 1, "eval": {"accuracy": 0.9, "f1_macro": 0.875, "loss": 0.4}},
        "best_epoch": 1, "run": facts,
    }))
    (out / "config.yaml").write_text(yaml.safe_dump(config or {
        "optim": {"options": {"betas": [0.9, 0.99]}, "clip_grad_norm": 1.0},
        "schedule": {"warmup_start_factor": 0.01, "options": {}}, "hub": {"license": "mit"}}))
    if plots:
        for name in PLOTS:
            (out / name).write_bytes(b"\x89PNG\r\n\x1a\n")
    return out


@pytest.mark.parametrize("kind", sorted(DATASETS))
def test_eval_results_and_metadata_parse_back_for_every_dataset_kind(tmp_path, saved_model, kind):
    from huggingface_hub import ModelCard

    out = _run_dir(tmp_path, saved_model, dataset=kind)
    card = ModelCard(render_model_card(out, repo_id="me/pets"))

    data = card.data
    assert data.library_name == "timm" and data.pipeline_tag == "image-classification"
    assert {"hubft", "timm", "image-classification"} <= set(data.tags)
    assert data.base_model == "someone/base" and data.license == "mit"
    assert data.model_name == "pets"
    results = {(r.metric_type, (r.metric_args or {}).get("average")): r for r in data.eval_results}
    assert {k: r.metric_value for k, r in results.items()} == {
        ("accuracy", None): 0.85, ("top_5_accuracy", None): 1.0, ("f1", "macro"): 0.8125}
    assert {r.task_type for r in results.values()} == {"image-classification"}
    first = data.eval_results[0]
    expected = {
        "hub": ("someone/pets", "validation", SHA, ["someone/pets"]),
        "imagefolder": ("imagefolder", "train (20% held out)", None, None),
        "python": ("custom", "train (25% held out)", None, None),
    }[kind]
    assert (first.dataset_type, first.dataset_split, first.dataset_revision, data.datasets) == expected
    # A local dataset is named by its folder, never by the user's path.
    assert "/home/alice" not in card.content
    if kind == "imagefolder":
        assert "pets-images" in card.content


def test_the_body_describes_model_usage_procedure_results_plots_and_versions(tmp_path, saved_model):
    text = render_model_card(_run_dir(tmp_path, saved_model), repo_id="me/pets")

    for needle in [
        '"cat", "dog", "fox", "owl", "a|b"',                                        # labels, in output order
        'timm.create_model("hf-hub:me/pets", pretrained=True)',                     # how to load
        'hubft.from_pretrained("hf-hub:me/pets")', "hubft pull me/pets",
        f"someone/base at `{SHA[::-1]}`", f"someone/pets at `{SHA}`",              # provenance with revisions
        "`cross_entropy` (label_smoothing=0.1)", "`adamw` (betas=[0.9, 0.99])", "norm 1.0",
        "| body.decay | 0.0001 | 0.05 |", "| head.decay | 0.001 | 0.05 |",         # per-group learning rates
        "`cosine`, 7 linear warmup updates from 0.01 x lr", "3 / 30",
        "128 = 16 per process x 2 accumulation steps x 4 processes", "bf16 mixed precision on cuda", "| seed | 1234 |",
        "auto_augment=rand-m9-mstd0.5", "re_prob=0.25", "hflip=0.5",               # augmentation
        "drop_path_rate=0.1", "ema=True",                                           # regularisation
        "| Top-1 accuracy | 0.85 | 0.9 |", "best epoch\n(1)", "| a\\|b | 0.8 |",    # results, per class
        *(f"]({name})" for name in PLOTS),                                          # plots shown
        "- timm 9.9.9",                                                              # framework versions
    ]:
        assert needle in text, needle


def test_plots_that_were_not_written_are_not_shown(tmp_path, saved_model):
    text = render_model_card(_run_dir(tmp_path, saved_model, plots=False), repo_id="me/pets")
    assert not any(name in text for name in PLOTS)


def test_a_directory_with_only_a_saved_model_gets_a_valid_card(tmp_path, saved_model):
    from huggingface_hub import ModelCard

    path = write_model_card(saved_model, repo_id="me/bare", path=tmp_path / "README.md")
    card = ModelCard.load(path)
    assert card.data.eval_results is None and card.data.library_name == "timm"
    assert card.data.pipeline_tag == "image-classification"
    assert card.data.tags == ["hubft", "timm", "image-classification"]
    assert (card.data.base_model, card.data.datasets, card.data.license) == (None, None, None)
    assert "No evaluation results" in card.text and "`test_resnet`" in card.text
    assert not (saved_model / "README.md").exists()  # path= writes there, not into the model directory


def test_a_staging_copy_is_the_same_card_written_without_the_flush(tmp_path, saved_model, monkeypatch):
    from hubft.hub import card as card_module

    durable = write_model_card(saved_model, repo_id="me/bare", path=tmp_path / "durable.md")
    monkeypatch.setattr(card_module, "atomic_write_text", lambda *a, **k: pytest.fail("flushed a staging copy"))
    staged = write_model_card(saved_model, repo_id="me/bare", path=tmp_path / "staged.md", durable=False)
    assert staged.read_text(encoding="utf-8") == durable.read_text(encoding="utf-8")


def test_multi_label_runs_publish_map_and_both_f1(tmp_path, saved_model):
    from huggingface_hub import ModelCard

    final = {"num_samples": 20, "map": 0.7, "f1_micro": 0.6, "f1_macro": 0.55, "loss": 0.3,
             "per_class_ap": {n: 0.7 for n in LABELS}}
    out = _run_dir(tmp_path, saved_model, final=final, facts=_facts(DATASETS["hub"], multi_label=True))
    card = ModelCard(render_model_card(out, repo_id="me/tags"))

    got = {(r.metric_type, (r.metric_args or {}).get("average")): r.metric_value for r in card.data.eval_results}
    assert got == {("mean_average_precision", None): 0.7, ("f1", "micro"): 0.6, ("f1", "macro"): 0.55}
    assert "multi-label" in card.data.tags
    assert "Per-class average precision" in card.text


def test_license_explicit_then_configured_then_inherited_from_the_base_card(hub, api, repo_id, tmp_path,
                                                                          saved_model):
    api.create_repo(repo_id)
    api.upload_file(path_or_fileobj=b"---\nlicense: apache-2.0\n---\n# base\n", path_in_repo="README.md",
                    repo_id=repo_id)
    facts = _facts(DATASETS["python"])
    facts["base_model"] = {**facts["base_model"], "repo_id": repo_id, "revision": None}
    out = _run_dir(tmp_path, saved_model, facts=facts, config={"hub": {"license": None}})

    assert model_card_data(out, token=hub.token).license == "apache-2.0"
    assert model_card_data(out, license="cc-by-4.0", token=hub.token).license == "cc-by-4.0"
    (out / "config.yaml").write_text("hub:\n  license: mit\n")
    assert model_card_data(out, token=hub.token).license == "mit"
    # A base card that cannot be read (the repo is gone, or the Hub down) leaves the license out, quietly.
    (out / "config.yaml").write_text("hub: {}\n")
    api.delete_repo(repo_id)
    assert model_card_data(out, token=hub.token).license is None


@pytest.mark.parametrize("text,problem", [
    ("---\nlibrary_name: [timm\n---\n# x\n", "invalid"),
    ("---\npipeline_tag: image-classification\ntags: [hubft]\n---\n# x\n", "library_name"),
])
def test_validation_refuses_broken_cards(text, problem):
    with pytest.raises(HubError, match=problem):
        validate_model_card(text)


def _expected_card_data(**changes):
    """What the card of ``_run_dir(dataset="hub")`` must say, written out here rather than rendered by hubft."""
    from huggingface_hub import EvalResult, ModelCardData

    fields = {"base_model": "someone/base", "license": "mit", "datasets": ["someone/pets"],
              "metrics": [("accuracy", 0.85, None), ("top_5_accuracy", 1.0, None), ("f1", 0.8125, "macro")],
              **changes}
    results = [EvalResult(task_type="image-classification", dataset_type="someone/pets", dataset_name="someone/pets",
                          dataset_split="validation", dataset_revision=SHA, metric_type=metric, metric_value=value,
                          metric_args={"average": average} if average else None)
               for metric, value, average in fields.pop("metrics")]
    return ModelCardData(model_name="pets", eval_results=results, **fields)


def test_validation_compares_what_parses_back_with_what_was_rendered(tmp_path, saved_model):
    from huggingface_hub import ModelCard

    text = render_model_card(_run_dir(tmp_path, saved_model), repo_id="me/pets")
    data = ModelCard(text).data
    assert (data.base_model, data.datasets, data.license, data.pipeline_tag, data.library_name) == (
        "someone/base", ["someone/pets"], "mit", "image-classification", "timm")
    assert data.tags == ["hubft", "timm", "image-classification"]
    assert [(r.metric_type, r.metric_value, r.metric_args, r.dataset_type, r.dataset_split, r.dataset_revision)
            for r in data.eval_results] == [
        ("accuracy", 0.85, None, "someone/pets", "validation", SHA),
        ("top_5_accuracy", 1.0, None, "someone/pets", "validation", SHA),
        ("f1", 0.8125, {"average": "macro"}, "someone/pets", "validation", SHA),
    ]

    validate_model_card(text, expected=_expected_card_data())
    with pytest.raises(HubError, match="eval results"):
        validate_model_card(text.replace("value: 0.85", "value: 0.58"), expected=_expected_card_data())
    for field, wrong in (("base_model", "someone/other"), ("license", "apache-2.0"), ("datasets", ["someone/cars"]),
                         ("metrics", [("accuracy", 0.85, None), ("top_5_accuracy", 1.0, None)])):
        name = "eval results" if field == "metrics" else field
        with pytest.raises(HubError, match=name):
            validate_model_card(text, expected=_expected_card_data(**{field: wrong}))
