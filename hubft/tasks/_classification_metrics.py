"""Evaluation metrics computed from gathered logits and targets.

Single-label (:func:`classification_metrics`): top-1 and top-5 accuracy, macro F1, per-class accuracy and the
confusion matrix. Multi-label (:func:`multilabel_metrics`): mean average precision and micro / macro F1. Each equals
the scikit-learn call named below (``tests/tasks/test_classification_metrics.py`` checks them on random and
adversarial inputs); where scikit-learn warns or leaves a choice, these are the conventions, and none of them warns:

- **Ties** (equal logits, common under bf16 / fp16 autocast): the lower class index ranks first, for top-1
  (``argmax`` takes the first maximum) and top-5 (a stable descending sort). ``accuracy`` equals
  ``accuracy_score(y, logits.argmax(1))``. ``top5`` equals ``top_k_accuracy_score(y, logits, k=5,
  labels=range(C))`` when the target's score is not tied at the cut; among ties scikit-learn ranks the *higher*
  index first, so in general ``top5`` equals ``top_k_accuracy_score(C - 1 - y, logits[:, ::-1], k=5, ...)``.
- **top5 needs more than 5 classes**: with 5 or fewer every class is in the top 5, so it would be 1.0 whatever the
  model (scikit-learn warns that ``k >= n_classes`` is meaningless); it is left out.
- **Macro F1** (single-label) averages the classes present in the targets: ``f1_score(y, pred,
  labels=sorted(set(y)), average="macro", zero_division=0)``. A class never predicted scores 0. A class predicted
  but absent from the targets is not averaged; it counts only through the errors it causes (the missed examples
  of the true classes).
- **Per-class accuracy** is each class's recall, ``recall_score(y, pred, labels=range(C), average=None)``, and None
  for a class absent from the targets (scikit-learn warns and reports 0.0 there).
- **Confusion matrix**: ``confusion_matrix(y, pred, labels=range(C))``; rows are true classes, columns predictions.
- **Average precision** (``per_class_ap``, ``map``) ranks each label's examples by logit, which orders them as the
  sigmoid does without float32 rounding tying the confident ones (every logit above ~17 has probability 1.0). It
  equals ``average_precision_score(y[:, c], logits[:, c])``: non-interpolated, the sum over distinct scores of
  (R_n - R_{n-1}) * P_n, so tied scores are one threshold and the order within them does not matter. A label with
  no positive target has AP None and is left out of ``map`` (scikit-learn warns, sets recall to 1 and scores it
  0.0, which would pull the mean down for a label the eval split cannot measure); ``map`` is 0.0 when no label has
  a positive.
- **Multi-label F1** predicts a label when its probability is above 0.5 (its logit above 0; exactly 0.5 is not a
  prediction) and equals ``f1_score(y, probs > 0.5, average="micro" / "macro", zero_division=1)``: a label with
  neither a positive target nor a positive prediction scores 1.0 (nothing to find, nothing wrongly found), and so
  does ``f1_micro`` when that holds for every label.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["classification_metrics", "multilabel_metrics"]


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, label_names: list[str]) -> dict:
    """Metrics for single-label classification, with the conventions in the module docstring.

    Args:
        logits: ``[N, C]`` scores.
        targets: ``[N]`` class indices.
        label_names: ``C`` names, used as keys of ``per_class_accuracy``.

    Returns:
        ``accuracy``, ``top5`` (only when ``C > 5``), ``f1_macro``, ``per_class_accuracy`` (name -> accuracy, None
        for a class absent from the targets), ``confusion_matrix`` (``C x C`` nested lists, rows = true class) and
        ``num_samples``. Rates are 0.0 when there are no examples.

    Examples:
        >>> import torch
        >>> m = classification_metrics(torch.tensor([[2.0, 1.0], [0.5, 0.5]]), torch.tensor([0, 1]), ["a", "b"])
        >>> m["accuracy"], m["per_class_accuracy"], m["confusion_matrix"]  # the tie goes to the lower index, "a"
        (0.5, {'a': 1.0, 'b': 0.0}, [[1, 0], [1, 0]])
    """
    import torch

    logits = logits.float()
    targets = targets.long()
    num_classes = logits.shape[1]
    n = targets.numel()
    pred = logits.argmax(dim=1)  # the first maximum: the lower index wins a tie
    out: dict = {"num_samples": int(n)}
    out["accuracy"] = int((pred == targets).sum()) / n if n else 0.0
    if num_classes > 5:
        # topk's order among equal scores is unspecified; a stable sort keeps argmax's rule (lower index first)
        top5 = logits.sort(dim=1, descending=True, stable=True).indices[:, :5]
        out["top5"] = int((top5 == targets[:, None]).any(dim=1).sum()) / n if n else 0.0
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    cm.index_put_((targets, pred), torch.ones_like(targets), accumulate=True)
    # Python ints from here on, so the rates are float64 like scikit-learn's, not float32
    rows, support, predicted = cm.tolist(), cm.sum(dim=1).tolist(), cm.sum(dim=0).tolist()
    per_class = {}
    f1s = []
    for c, name in enumerate(label_names):
        tp = rows[c][c]
        per_class[name] = tp / support[c] if support[c] else None
        if support[c]:
            f1s.append(2 * tp / (support[c] + predicted[c]))
    out["f1_macro"] = sum(f1s) / len(f1s) if f1s else 0.0
    out["per_class_accuracy"] = per_class
    out["confusion_matrix"] = rows
    return out


def _average_precision(scores: torch.Tensor, positives: torch.Tensor) -> float | None:
    """Non-interpolated AP of one label: sum over distinct scores of (R_n - R_{n-1}) * P_n; None without positives."""
    import torch

    num_pos = int(positives.sum())
    if num_pos == 0:
        return None
    order = scores.argsort(descending=True)
    ranked = scores[order]
    tps = positives[order].double().cumsum(0)
    # A threshold keeps every example scored at least as high as it, so only the last of a run of equal scores
    # is a point of the curve: counting ties one by one would make AP depend on their arbitrary order.
    last_of_run = torch.ones_like(ranked, dtype=torch.bool)
    last_of_run[:-1] = ranked[1:] != ranked[:-1]
    kept = torch.arange(1, len(ranked) + 1, dtype=torch.float64)[last_of_run]
    tps = tps[last_of_run]
    new_tps = torch.diff(tps, prepend=tps.new_zeros(1))
    return float((new_tps * tps / kept).sum() / num_pos)


def multilabel_metrics(logits: torch.Tensor, targets: torch.Tensor, label_names: list[str]) -> dict:
    """Metrics for multi-label classification, with the conventions in the module docstring.

    Args:
        logits: ``[N, C]`` scores, one sigmoid per label.
        targets: ``[N, C]`` multi-hot rows; an entry above 0.5 is a positive (so smoothed labels count too).
        label_names: ``C`` names, used as keys of ``per_class_ap``.

    Returns:
        ``map`` (mean over labels with at least one positive), ``f1_micro``, ``f1_macro``, ``per_class_ap``
        (name -> AP, None for a label without positives) and ``num_samples``.

    Examples:
        >>> import torch
        >>> m = multilabel_metrics(torch.tensor([[1.0, -1.0], [1.0, -2.0]]), torch.tensor([[0, 0], [1, 0]]), ["a", "b"])
        >>> m["per_class_ap"], m["f1_macro"]  # tied scores are one threshold; "b" has nothing to find
        ({'a': 0.5, 'b': None}, 0.8333333333333333)
    """
    logits = logits.float()
    pos = targets > 0.5
    pred = logits > 0  # sigmoid(logit) > 0.5, without float32 rounding tiny logits to exactly 0.5
    aps = {name: _average_precision(logits[:, c], pos[:, c]) for c, name in enumerate(label_names)}
    valid = [v for v in aps.values() if v is not None]
    tp = (pred & pos).sum(0).double()
    errors = (pred ^ pos).sum(0).double()  # false positives + false negatives
    micro_den = float(2 * tp.sum() + errors.sum())
    per_class_f1 = [2 * t / (2 * t + e) if 2 * t + e else 1.0 for t, e in zip(tp.tolist(), errors.tolist())]
    return {
        "num_samples": int(targets.shape[0]),
        "map": sum(valid) / len(valid) if valid else 0.0,
        "f1_micro": float(2 * tp.sum()) / micro_den if micro_den else 1.0,
        "f1_macro": sum(per_class_f1) / len(per_class_f1),
        "per_class_ap": aps,
    }
