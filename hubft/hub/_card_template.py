"""The Jinja template of the model card body (the YAML metadata is rendered by ``ModelCardData``).

Every value is computed in :mod:`hubft.hub.card`; the template only lays it out, so a missing fact shows as
``-`` rather than breaking the render.
"""

MODEL_CARD_TEMPLATE = """\
---
{{ card_data }}
---

# {{ title }}

{{ summary }}

{% if labels %}**Labels** ({{ labels | length }}, in output order): {{ labels | map("tojson") | join(", ") }}
{% endif %}
## How to use
{% if adapter_kind %}
This repo holds a `{{ adapter_kind }}` adapter (peft) for {{ base_label }}, not a whole model:
`adapter_model.safetensors` holds the adapter weights and the {{ "new head" if peft_alone else "decoder, trained \
fully" }}, `adapter_config.json` names the backbone.
{% if peft_alone %}
With timm and peft alone:

```python
import timm
from peft import PeftModel

base = timm.create_model("{{ base_timm }}", pretrained=True, num_classes={{ labels | length }})
model = PeftModel.from_pretrained(base, "{{ repo_id }}").eval()
```
{% endif %}

With hubft, which builds the backbone itself (the labels are in `model.label_names`):

```python
import hubft

model = hubft.from_pretrained("hf-hub:{{ repo_id }}").eval()
```

From the command line (`hubft merge` writes a plain timm model, which loads without peft):

```bash
hubft merge {{ repo_id }} ./merged [--push <owner>/<name>]
hubft predict {{ repo_id }} photos/ --top-k 3 -o predictions.jsonl
hubft eval {{ repo_id }} --data.name <owner/dataset>
```
{% else %}
With timm (the labels are in `model.pretrained_cfg["label_names"]`):

```python
import timm
import torch

model = timm.create_model("hf-hub:{{ repo_id }}", pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
with torch.no_grad():
    probs = model(transform(image).unsqueeze(0)).softmax(-1)  # image: a PIL image
```

With hubft (the labels are in `model.label_names`), or to fine-tune it further:

```python
import hubft

model = hubft.from_pretrained("hf-hub:{{ repo_id }}").eval()
new = hubft.create_model("hf-hub:{{ repo_id }}", label_names=["cat", "dog"])  # a new head for other labels
```

With transformers (`TimmWrapper`; the labels are in `model.config.id2label`):

```python
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

model = AutoModelForImageClassification.from_pretrained("{{ repo_id }}").eval()
processor = AutoImageProcessor.from_pretrained("{{ repo_id }}")
logits = model(**processor(image, return_tensors="pt")).logits
classify = pipeline("{{ pipeline_tag }}", model="{{ repo_id }}")  # classify(image): labels and scores
```

From the command line:

```bash
hubft pull {{ repo_id }} -o ./model
hubft predict {{ repo_id }} photos/ --top-k 3 -o predictions.jsonl
hubft eval {{ repo_id }} --data.name <owner/dataset>
hubft finetune --model.name hf-hub:{{ repo_id }} --data.name <owner/dataset>
```
{% endif %}
## Training procedure

| setting | value |
|---|---|
{% for key, value in procedure %}| {{ key }} | {{ value }} |
{% endfor %}
{% if param_groups %}
Parameter groups (each group's peak learning rate is baked into the group, so every scheduler honours it):

| group | peak lr | weight decay |
|---|---|---|
{% for g in param_groups %}| {{ g.name }} | {{ g.lr }} | {{ g.weight_decay }} |
{% endfor %}{% endif %}
**Augmentation:** {{ augmentation }}

**Regularisation:** {{ regularisation }}

## Results
{% if results %}
Evaluated on {{ eval_set }}. "final" is the pushed model (end of training); "best" is the best epoch
({{ best_epoch }}) by the selection metric.

| metric | final | best |
|---|---|---|
{% for name, final, best in results %}| {{ name }} | {{ final }} | {{ best }} |
{% endfor %}{% if per_class %}
{{ per_class_title }}:

| class | {{ per_class_metric }} |
|---|---|
{% for name, value in per_class %}| {{ name }} | {{ value }} |
{% endfor %}{% endif %}{% else %}
No evaluation results were recorded for this model.
{% endif %}{% for file, caption in plots %}
![{{ caption }}]({{ file }})
{% endfor %}{% if frameworks %}
## Framework versions

{% for name, version in frameworks %}- {{ name }} {{ version }}
{% endfor %}{% endif %}
This model card was written by hubft.
"""
