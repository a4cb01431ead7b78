"""timm and datasets round trips through the local Hub, with the libraries' own Hub code and no endpoint= hints."""

from __future__ import annotations

import pytest
import torch

from hubft.testing import FaultPlan


@pytest.mark.slow
def test_timm_push_then_create_model_from_the_hub_gives_identical_logits(hub, repo_id):
    import timm
    from timm.models import push_to_hf_hub

    model = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    # The weights upload fails once; the client's own retry must carry the push through in a single commit.
    hub.set_faults(FaultPlan(rate=1.0, kinds=("503",), targets=("lfs-upload",), max_per_request=1))
    push_to_hf_hub(model, repo_id, token=hub.token, safe_serialization=True,
                   model_config={"label_names": ["cat", "dog", "fox"]})
    loaded = timm.create_model(f"hf-hub:{repo_id}", pretrained=True).eval()

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded.pretrained_cfg["label_names"] == ["cat", "dog", "fox"]
    commits = [r for r in hub.requests if r.method == "POST" and "/commit/" in r.path]
    assert [r.status for r in commits] == [200] and hub.faults_injected == 1


@pytest.fixture
def datasets_without_side_channels(monkeypatch):
    import datasets

    # Else datasets looks up a dataset-viewer host derived from HF_ENDPOINT (a DNS query for a name that does
    # not exist); the download counter is already off through HF_UPDATE_DOWNLOAD_COUNTS=0.
    monkeypatch.setattr(datasets.config, "USE_PARQUET_EXPORT", False)
    return datasets


@pytest.mark.slow
def test_dataset_push_to_hub_then_load_dataset(hub, repo_id, tmp_path, datasets_without_side_channels):
    datasets = datasets_without_side_channels
    features = datasets.Features({"x": datasets.Value("int64"), "label": datasets.ClassLabel(names=["a", "b"])})
    ds = datasets.Dataset.from_dict({"x": list(range(30)), "label": [i % 2 for i in range(30)]}, features=features)
    ds.push_to_hub(repo_id, token=hub.token, private=True)
    ds.select(range(10)).push_to_hub(repo_id, token=hub.token, split="test")

    # Anonymous first: once the owner has loaded it, datasets may answer from its caches instead of the hub.
    with pytest.raises(datasets.exceptions.DatasetNotFoundError):
        datasets.load_dataset(repo_id, token=False, cache_dir=str(tmp_path / "anonymous"))
    back = datasets.load_dataset(repo_id, token=hub.token, cache_dir=str(tmp_path / "cache"))
    assert back["train"]["x"] == list(range(30)) and len(back["test"]) == 10
    assert back["train"].features["label"].names == ["a", "b"]
    streamed = datasets.load_dataset(repo_id, split="train", streaming=True, token=hub.token)
    assert [row["x"] for row in streamed] == list(range(30))
    assert any(r.status == 206 for r in hub.requests)  # streaming reads the parquet footer with a Range request
