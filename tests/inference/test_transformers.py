"""A classifier hubft pushes loads in transformers (TimmWrapper) as it is: the same logits and top-1 label as
hubft and timm, through AutoModelForImageClassification, AutoImageProcessor and the pipeline."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import hubft


@pytest.fixture
def pushed(hub, repo_id, trained):
    from hubft.hub.push import push_to_hub

    push_to_hub(trained, repo_id, token=hub.token)
    return repo_id


def test_transformers_timm_and_hubft_agree_on_a_pushed_model(pushed, hub, send_hf_token):
    import timm
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    send_hf_token(hub.token)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForImageClassification.from_pretrained(pushed).eval()
        processor = AutoImageProcessor.from_pretrained(pushed)
        classify = pipeline("image-classification", model=pushed, image_processor=processor)
    ours = hubft.from_pretrained(f"hf-hub:{pushed}").eval()
    theirs = timm.create_model(f"hf-hub:{pushed}", pretrained=True).eval()
    image = Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype("uint8"))
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    transform = hubft.create_transforms(ours.pretrained_cfg, training=False)
    assert torch.allclose(pixels[0], transform(image), atol=1e-6)  # the same preprocessing
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
        assert torch.allclose(logits, ours(pixels), atol=1e-5) and torch.allclose(logits, theirs(pixels), atol=1e-5)
    assert model.config.id2label == dict(enumerate(ours.label_names))
    top = classify(image, top_k=1)[0]
    assert top["label"] == ours.label_names[int(logits.argmax())]
    assert top["score"] == pytest.approx(float(logits.softmax(-1).max()), abs=1e-5)


def test_the_card_says_how_to_load_it_three_ways(pushed, api):
    from huggingface_hub import ModelCard

    card = ModelCard.load(pushed, token=api.token).text
    for line in (f'timm.create_model("hf-hub:{pushed}", pretrained=True)', f'hubft.from_pretrained("hf-hub:{pushed}")',
                 f'AutoModelForImageClassification.from_pretrained("{pushed}")'):
        assert line in card
