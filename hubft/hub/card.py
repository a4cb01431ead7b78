"""The model card: structured metadata (``ModelCardData`` + ``EvalResult``) and a body rendered from a template.

The card is rendered from what a run directory holds (``config.json`` or an adapter's ``adapter_config.json``,
``config.yaml``, ``metrics.json`` and the plots), so ``hubft push`` renders it again with the real repo id, and it
is validated locally (parsed back the way the Hub parses it, the eval results recovered) before anything is
uploaded. A directory written by :func:`hubft.save_pretrained` alone (no metrics) still gets a valid card, without
results.

Local paths (a ``local-dir:`` backbone, an image folder) appear in the card by their last component only: the card
is public, the user's directory layout is not.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from hubft.errors import HubError, one_line
from hubft.files import atomic_write_text

if TYPE_CHECKING:
    from huggingface_hub import ModelCardData

    from hubft.tasks import Task

__all__ = ["PLOTS", "SAMPLE_PLOTS",
           "eval_results_for", "model_card_data", "render_model_card", "validate_model_card",
           "write_model_card"]

PLOTS = {
    "lr_curve.png": "Learning rate of every parameter group per optimizer update",
    "loss_curve.png": "Training loss and evaluation metrics",
    "confusion_matrix.png": "Confusion matrix on the evaluation split",
}
"""The plot files every run writes, with their captions in the card (and the order they appear in)."""

SAMPLE_PLOTS = {
    "segmentation_sample.png": "An evaluation image, its mask and the model's prediction",
}
"""Sample predictions a task draws (``Task.sample_plot``), shown after :data:`PLOTS` when the run has them."""

_TAGS = ("hubft", "timm")


@dataclass(frozen=True)
class _Run:
    """What a run directory says about itself (empty dicts for files that are absent).

    ``model`` is timm's ``config.json``; for an adapter directory, the same keys read from ``adapter_config.json``'s
    hubft record, and ``peft`` the adapter config itself.
    """

    root: Path
    model: dict
    metrics: dict
    config: dict
    peft: dict

    @property
    def adapter(self) -> dict:
        """The adapter's settings, as the run and the model record them (a merged model says so); ``{}`` for a
        full run."""
        return {**(self.facts.get("adapter") or {}), **((self.model.get("hubft") or {}).get("adapter") or {})}

    @property
    def facts(self) -> dict:
        return self.metrics.get("run") or {}

    @property
    def base(self) -> dict:
        return self.facts.get("base_model") or (self.model.get("hubft") or {}).get("source") or {}

    @property
    def dataset(self) -> dict:
        return self.facts.get("dataset") or {}

    @property
    def task(self) -> Task:
        """The run's task (``metrics.json`` names it; a directory without metrics is a classifier)."""
        from hubft.tasks import DEFAULT_TASK, get_task

        return get_task(self.facts.get("task") or DEFAULT_TASK).for_labels(bool(self.facts.get("multi_label")))


def _read_run(output_dir: str | os.PathLike) -> _Run:
    root = Path(output_dir)

    def read(name: str, parse) -> dict:
        try:
            value = parse((root / name).read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError):
            return {}
        return value if isinstance(value, dict) else {}

    model, peft = read("config.json", json.loads), read("adapter_config.json", json.loads)
    if not model and peft:
        record = (peft.get("auto_mapping") or {}).get("hubft") or {}
        model = {"architecture": record.get("architecture"), "label_names": record.get("label_names"),
                 "hubft": {k: record.get(k) for k in ("source", "task", "adapter", "decoder")}}
    return _Run(root, model, read("metrics.json", json.loads), read("config.yaml", _safe_yaml), peft)


def _safe_yaml(text: str) -> Any:
    # libyaml's safe loader when PyYAML was built with it: the pure-Python one took half of a push's own time.
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _base_model_license(base: dict, token: str | bool | None) -> str | None:
    """The license the base model's card declares, when the base came from a Hub; None if it cannot be read."""
    repo_id = base.get("repo_id")
    if not repo_id:
        return None
    from huggingface_hub import HfApi

    try:
        # One request without retries: the license is a nicety, never a reason to stall a run or a push.
        info = HfApi().model_info(repo_id, revision=base.get("revision"), token=token)
    except Exception:  # offline, unreachable, private or gone: the license is simply not inherited
        return None
    card = info.card_data
    value = getattr(card, "license", None) if card is not None else None
    return value if isinstance(value, str) and value else None


def local_name(path: str | None) -> str | None:
    """The last component of a local path, POSIX or Windows (how the card and the uploaded config show it)."""
    return re.split(r"[\\/]", path.rstrip("/\\"))[-1] if path else None


def _dataset_names(ds: dict) -> tuple[str | None, str, str]:
    """(Hub dataset id or None, dataset_type for the model-index, human name)."""
    if ds.get("kind") == "hub" and ds.get("dataset"):
        return ds["dataset"], ds["dataset"], ds["dataset"]
    kind = ds.get("kind") or "unknown"
    if kind == "python" or not ds.get("dataset"):
        return None, "custom", "an in-memory dataset"
    name = local_name(ds["dataset"])
    return None, kind, f"local {kind} `{name}`"


def _eval_split(ds: dict) -> str:
    if ds.get("eval_split"):
        return ds["eval_split"]
    fraction = ds.get("eval_fraction")
    held_out = f"{fraction:.0%} held out" if isinstance(fraction, (int, float)) else "held out"
    return f"{ds.get('train_split') or 'train'} ({held_out})"


def _base_label(base: dict, model: dict) -> str:
    if base.get("repo_id"):
        return base["repo_id"]
    if base.get("kind") == "local":
        return f"local directory `{local_name(base.get('path') or base.get('source'))}`"
    return base.get("source") or model.get("architecture") or "unknown"


def model_card_data(output_dir: str | os.PathLike, *, repo_id: str | None = None, license: str | None = None,
                    token: str | bool | None = None) -> ModelCardData:
    """The card's structured metadata (a ``huggingface_hub.ModelCardData``) for a run directory.

    The license is, in order: ``license``, ``hub.license`` of the run's ``config.yaml``, else the license the base
    model's Hub card declares (one request to the Hub; skipped silently when it fails).

    Args:
        output_dir: A run directory (see :func:`render_model_card`).
        repo_id: The repo the card is for (names the ``model-index`` entry).
        license: A license id that overrides the others.
        token: Used only to read the base model's license from a private repo. Never written.
    """
    return _card_data(_read_run(output_dir), repo_id=repo_id, license=license, token=token)


def _card_data(run: _Run, *, repo_id: str | None, license: str | None, token: str | bool | None) -> ModelCardData:
    from huggingface_hub import ModelCardData

    ds, task = run.dataset, run.task
    dataset_id, _, _ = _dataset_names(ds)
    eval_results = eval_results_for(task, ds, run.metrics.get("final") or {})
    adapter_tags = (["peft"] if run.peft else []) + ([run.adapter["kind"]] if run.adapter.get("kind") else [])
    tags = [*_TAGS, *adapter_tags, *task.tags]
    license = license or (run.config.get("hub") or {}).get("license") or _base_model_license(run.base, token)
    return ModelCardData(
        library_name="peft" if run.peft else "timm", pipeline_tag=task.pipeline_tag, license=license, tags=tags,
        base_model=run.base.get("repo_id"), datasets=[dataset_id] if dataset_id else None,
        metrics=sorted({r.metric_type for r in eval_results}) or None,
        model_name=(repo_id or "model").split("/")[-1], eval_results=eval_results or None,
    )


def eval_results_for(task: Task, dataset: dict, metrics: dict) -> list:
    """The ``model-index`` results (``huggingface_hub.EvalResult``) of ``metrics`` measured on ``dataset``.

    Args:
        task: The task (as it applies to the data) whose :attr:`~hubft.tasks.Task.card_metrics` are published.
        dataset: A :class:`~hubft.data.DataSource` as a dict: where the metrics were measured.
        metrics: The task's metrics; those missing or not numbers are left out.
    """
    from huggingface_hub import EvalResult

    _, dataset_type, dataset_name = _dataset_names(dataset)
    return [
        EvalResult(task_type=task.pipeline_tag, task_name=task.title, dataset_type=dataset_type,
                   dataset_name=dataset_name.replace("`", ""), dataset_split=_eval_split(dataset),
                   dataset_revision=dataset.get("revision_sha") or dataset.get("revision"),
                   metric_type=m.metric_type, metric_name=m.name, metric_value=round(float(metrics[m.key]), 6),
                   metric_args=dict(m.args) or None)
        for m in task.card_metrics if isinstance(metrics.get(m.key), (int, float))
    ]


def _fmt(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items()) or "-"
    return str(value)


def _procedure(run: _Run) -> list[tuple[str, str]]:
    f, cfg, base, ds = run.facts, run.config, run.base, run.dataset
    optim, schedule = cfg.get("optim") or {}, cfg.get("schedule") or {}
    train_cfg = cfg.get("train") or {}
    _, _, dataset_name = _dataset_names(ds)
    base_value = _base_label(base, run.model) + (f" at `{base['revision']}`" if base.get("revision") else "")
    if base and not base.get("pretrained", True):
        base_value += " (random initialisation: no pretrained weights)"
    elif base.get("head_reset"):
        base_value += " (classifier replaced for these labels)"
    dataset_revision = ds.get("revision_sha") or ds.get("revision")
    rows = [
        ("architecture", f"`{run.model.get('architecture', '-')}`"),
        ("base model", base_value),
        ("dataset", dataset_name + (f" at `{dataset_revision}`" if dataset_revision else "")),
        ("train / eval images", f"{_fmt(f.get('train_examples'))} / {_fmt(f.get('eval_examples'))} "
                                f"(eval: {_eval_split(ds)})"),
        ("loss", f"`{f.get('loss')}`" + (f" ({_fmt(f['loss_options'])})" if f.get("loss_options") else "")),
        ("optimizer", f"`{f.get('optimizer')}`" + (f" ({_fmt(optim['options'])})" if optim.get("options") else "")
         + (f", gradient clipping at norm {optim['clip_grad_norm']}" if optim.get("clip_grad_norm") else "")),
        ("schedule", f"`{f.get('schedule')}`" + (f" ({_fmt(schedule['options'])})" if schedule.get("options") else "")
         + f", {_fmt(f.get('warmup_steps'))} linear warmup updates"
         + (f" from {schedule['warmup_start_factor']} x lr" if schedule.get("warmup_start_factor") else "")),
        ("epochs / optimizer updates", f"{_fmt(f.get('epochs'))} / {_fmt(f.get('updates'))}"
         + (f" (capped at {train_cfg['max_updates']})" if train_cfg.get("max_updates") else "")),
        ("effective batch size", f"{_fmt(f.get('effective_batch_size'))} = {_fmt(f.get('batch_size_per_process'))}"
                                 f" per process x {_fmt(f.get('grad_accum_steps'))} accumulation steps x "
                                 f"{_fmt(f.get('processes'))} processes"),
        ("precision", (f"{f['mixed_precision']} mixed precision" if f.get("mixed_precision") not in (None, "no")
                       else "fp32") + f" on {_fmt(f.get('device'))}" + (", channels-last" if f.get("channels_last") else "")),
        ("seed", _fmt(f.get("seed"))),
    ]
    return (rows if f else rows[:2]) + _adapter_rows(run)


def _adapter_rows(run: _Run) -> list[tuple[str, str]]:
    """The adapter's settings and the trainable parameters, for an adapter run (or a model merged from one)."""
    a, f = run.adapter, run.facts
    rows = []
    if a:
        merged = " (merged into the weights: this is a plain timm model)" if a.get("merged") and not run.peft else ""
        rows.append(("adapter", f"`{a.get('kind')}` (peft), r={_fmt(a.get('r'))}, alpha={_fmt(a.get('alpha'))}, "
                                f"dropout={_fmt(a.get('dropout'))}, on {_fmt(a.get('modules'))} modules: "
                                f"{a.get('targets')}; the new head trained fully, the rest frozen{merged}"))
        rows.append(("adapter target_modules", f"`{_cell(a.get('target_modules'))}`"))
    if f.get("trainable_parameters") is not None and f.get("parameters"):
        share = f["trainable_parameters"] / f["parameters"]
        rows.append(("trainable parameters", f"{f['trainable_parameters']:,} of {f['parameters']:,} ({share:.2%})"))
    return rows


def _cell(value: Any) -> str:
    """A value inside a markdown table cell and code span ("|" would end the cell)."""
    return str(value).replace("|", "\\|")


def _augmentation(f: dict) -> str:
    aug = f.get("augmentation") or {}
    # Defaults that mean "off" are left out, so the line lists what was actually applied.
    off = {"auto_augment": None, "re_prob": 0.0, "color_jitter": None, "hflip": 0.0, "scale": None,
           "ratio": None, "mixup_alpha": 0.0, "cutmix_alpha": 0.0}
    used = {k: v for k, v in aug.items() if k in off and v != off[k]}
    mixing = used.get("mixup_alpha") or used.get("cutmix_alpha")
    if mixing:
        used.update({k: aug.get(k) for k in ("mixup_prob", "mixup_switch_prob", "mixup_off_epoch")
                     if aug.get(k) is not None})
    if used.get("re_prob"):
        used["re_mode"] = aug.get("re_mode")
    return (_fmt(used) + " (timm transforms, train split only)") if used else \
        "none beyond timm's train-time resize and crop" if aug else "-"


def _regularisation(f: dict) -> str:
    reg = {k: v for k, v in (f.get("regularisation") or {}).items() if v not in (None, False, 0, 0.0)}
    return _fmt(reg) if reg else "none"


def _results(run: _Run) -> tuple[list, list, str, str]:
    final = run.metrics.get("final") or {}
    best = (run.metrics.get("best") or {}).get("eval") or {}
    rows = [(m.name, _fmt(final.get(m.key)), _fmt(best.get(m.key))) for m in run.task.card_metrics if m.key in final]
    if "loss" in final:
        rows.append(("Eval loss", _fmt(final["loss"]), _fmt(best.get("loss"))))
    if run.task.per_class and final.get(run.task.per_class[0]):
        key, title, metric = run.task.per_class
        # A "|" in a class name would end its table cell.
        return rows, [(k.replace("|", "\\|"), _fmt(v)) for k, v in final[key].items()], title, metric
    return rows, [], "", ""


def render_model_card(output_dir: str | os.PathLike, *, repo_id: str | None = None, license: str | None = None,
                      token: str | bool | None = None) -> str:
    """Render the README.md model card of a run directory.

    Metadata: ``library_name: timm`` (``peft`` for an adapter directory, tagged ``peft`` and ``lora`` / ``dora``),
    the task's ``pipeline_tag`` and tags, license, ``base_model`` (the source repo), ``datasets`` (a Hub dataset id), ``metrics`` and a ``model-index`` whose eval results (top-1,
    top-5, F1 or mAP, with the dataset id or local kind, split and revision) ``ModelCard.load(...).data
    .eval_results`` returns. Body: the model and its labels, loading snippets with ``repo_id`` (for an adapter:
    with peft on the backbone, with hubft, and ``hubft merge``), the training procedure (base model and dataset with
    their revisions, loss, optimizer, per-group learning rates, schedule and warmup, epochs, effective batch size,
    processes, precision, seed, the adapter's settings and the trainable parameters), augmentation and
    regularisation, final
    and best results with per-class scores, the plots present in the directory, and framework versions.

    Args:
        output_dir: A directory written by :func:`hubft.finetune` (or only :func:`hubft.save_pretrained`).
        repo_id: The repo the card is for; a placeholder ``<owner>/<name>`` when None.
        license: See :func:`model_card_data`.
        token: See :func:`model_card_data`.

    Returns:
        The card: YAML metadata between ``---`` lines, then the markdown body.
    """
    run = _read_run(output_dir)
    return _render(run, _card_data(run, repo_id=repo_id, license=license, token=token), repo_id)


def _render(run: _Run, data: ModelCardData, repo_id: str | None) -> str:
    shown_id = repo_id or "<owner>/<name>"
    f = run.facts
    labels = run.model.get("label_names") or f.get("label_names") or []
    _, _, dataset_name = _dataset_names(run.dataset)
    summary = (f"A `{run.model.get('architecture', '?')}` {run.task.summary} for {len(labels) or '?'} classes, "
               f"fine-tuned with hubft from {_base_label(run.base, run.model)}"
               + (f" on {dataset_name}." if f else "."))
    results, per_class, per_class_title, per_class_metric = _results(run)
    # What ModelCard.from_template does (the card data's fields and its YAML as template variables), with the
    # template compiled once per process instead of once per card: compiling took about half of a card's ~9 ms,
    # which every push pays. The YAML is parsed back once, by validate_model_card, rather than also here.
    variables = dict(
        title=shown_id.split("/")[-1], summary=summary, labels=labels, repo_id=shown_id, procedure=_procedure(run),
        param_groups=[{"name": g.get("name"), "lr": f"{g['lr']:.3g}", "weight_decay": _fmt(g.get("weight_decay"))}
                      for g in f.get("param_groups") or []],
        augmentation=_augmentation(f), regularisation=_regularisation(f),
        eval_set=f"{dataset_name}, split {_eval_split(run.dataset)}", best_epoch=_fmt(run.metrics.get("best_epoch")),
        results=results, per_class=per_class, per_class_title=per_class_title, per_class_metric=per_class_metric,
        plots=[(name, caption) for name, caption in {**PLOTS, **SAMPLE_PLOTS}.items()
               if (run.root / name).is_file()],
        frameworks=list((f.get("frameworks") or {}).items()),
    )
    text = _card_template().render(data.to_dict() | variables | _usage(run), card_data=data.to_yaml())
    # Optional template sections leave runs of blank lines behind; markdown renders one the same.
    return re.sub(r"\n{3,}", "\n\n", text)


def _usage(run: _Run) -> dict:
    """Template variables of the "How to use" section of an adapter: how timm builds its backbone."""
    if not run.peft:
        return {"adapter_kind": None}
    base = run.base
    if base.get("kind") == "hub":
        timm_name = f"hf-hub:{base['repo_id']}"
    elif base.get("kind") == "local":
        timm_name = f"local-dir:{local_name(base.get('path'))}"
    else:
        timm_name = base.get("source") or run.model.get("architecture") or "<backbone>"
    # A segmentation adapter goes on a backbone plus hubft's decoder, which timm alone does not build.
    peft_alone = not (run.model.get("hubft") or {}).get("decoder")
    return {"adapter_kind": run.adapter.get("kind") or "LoRA", "base_timm": timm_name,
            "base_label": _base_label(base, run.model), "peft_alone": peft_alone}


@functools.lru_cache(maxsize=1)
def _card_template():
    import jinja2

    from hubft.hub._card_template import MODEL_CARD_TEMPLATE

    return jinja2.Template(MODEL_CARD_TEMPLATE)


def validate_model_card(text: str, expected: ModelCardData | None = None) -> None:
    """Parse a card back the way the Hub does, without any network call, and check what it must carry.

    Args:
        text: The card.
        expected: The ``ModelCardData`` it was rendered from; when given, the parsed eval results, base model,
            license and datasets must equal it.

    Raises:
        HubError: The YAML does not parse, required fields are missing, or a parsed field differs from
            ``expected`` (a rendering bug: nothing is uploaded).
    """
    from huggingface_hub import ModelCard

    try:
        card = ModelCard(text, ignore_metadata_errors=False)
    except Exception as e:
        raise HubError(f"the model card's metadata is invalid ({one_line(e)})",
                       fix="report this as a hubft bug; nothing was uploaded") from None
    missing = [k for k in ("library_name", "pipeline_tag", "tags") if not getattr(card.data, k, None)]
    if missing:
        raise HubError(f"the model card lacks {', '.join(missing)}", fix="report this as a hubft bug")
    if expected is None:
        return

    def results(data) -> list:
        return [(r.metric_type, r.metric_value, r.dataset_type, r.dataset_split, r.dataset_revision)
                for r in data.eval_results or []]

    for name, got, want in (("eval results", results(card.data), results(expected)),
                            ("base_model", card.data.base_model, expected.base_model),
                            ("license", card.data.license, expected.license),
                            ("datasets", card.data.datasets, expected.datasets)):
        if got != want:
            raise HubError(f"the model card's {name} parse back as {got!r}, not {want!r}",
                           fix="report this as a hubft bug; nothing was uploaded")


def write_model_card(output_dir: str | os.PathLike, *, repo_id: str | None = None, license: str | None = None,
                     token: str | bool | None = None, path: str | os.PathLike | None = None,
                     durable: bool = True) -> Path:
    """Render and validate the card of ``output_dir``, then write it atomically; returns its path.

    Args:
        output_dir: The run directory the card describes.
        repo_id: See :func:`render_model_card`.
        license: See :func:`model_card_data`.
        token: See :func:`model_card_data`.
        path: Where to write; default ``output_dir/README.md``.
        durable: False writes ``path`` plainly, without the flush to disk and the rename (about 5 ms): for a file
            in a temporary directory that nothing reads after a crash, such as a push's staging copy.

    Raises:
        HubError: The rendered card does not validate (nothing is written).
    """
    run = _read_run(output_dir)
    data = _card_data(run, repo_id=repo_id, license=license, token=token)
    text = _render(run, data, repo_id)
    validate_model_card(text, expected=data)
    target = Path(path) if path is not None else Path(output_dir) / "README.md"
    if durable:
        atomic_write_text(target, text)
    else:
        target.write_text(text, encoding="utf-8")
    return target
