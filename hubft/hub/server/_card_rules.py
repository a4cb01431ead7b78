"""What ``POST /api/validate-yaml`` checks in a README's metadata, with messages shaped like the Hub's.

The client sends the README before committing it (``create_commit``) and from ``ModelCard.validate``: errors make
both raise ``ValueError``; warnings become Python warnings. Checked here:

* the YAML block parses and is a mapping (error);
* no metadata at all, or an empty block (warning, the Hub's "empty or missing yaml metadata");
* ``license``: a license id the Hub knows, or ``other`` (error otherwise); a list of them is allowed;
* ``tags``, ``datasets``, ``language``: a string or a list of strings (error otherwise);
* ``model-index`` (model repos): a list of ``{name, results: [{task: {type}, dataset: {type, name}, metrics: [{type,
  value}]}]}``, each missing or mistyped field an error naming its path (``model-index[0].results[0].task.type``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml
from huggingface_hub.repocard import REGEX_YAML_BLOCK

# The license ids the Hub accepts in card metadata (https://huggingface.co/docs/hub/repositories-licenses).
LICENSES = frozenset("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5
cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0
cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0
cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl
lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0 odc-by odbl
openmdw-1.0 openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license
fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 gemma unknown other
""".split())
EMPTY_WARNING = ("empty or missing yaml metadata in repo card "
                 "(https://huggingface.co/docs/hub/model-cards#model-card-metadata)")


def front_matter(text: str) -> dict[str, Any] | None:
    """The YAML metadata block of a README, or ``None`` when there is none.

    Raises:
        ValueError: when the block is not valid YAML or not a mapping.
    """
    match = REGEX_YAML_BLOCK.search(text)
    if match is None:
        return None
    data = yaml.safe_load(match.group(2))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"the YAML metadata must be a mapping, got {type(data).__name__}")
    return data


def _strings(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))


def _license_errors(value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    bad = [v for v in values if not isinstance(v, str) or v.lower() not in LICENSES]
    return [f'"license" must be one of the Hub\'s license ids or "other", got {v!r} '
            "(https://huggingface.co/docs/hub/repositories-licenses)" for v in bad]


def _need(errors: list[str], item: Any, path: str, key: str, check: Callable[[Any], bool], kind: str) -> Any:
    value = item.get(key) if isinstance(item, dict) else None
    if value is None:
        errors.append(f'"{path}.{key}" is required')
    elif not check(value):
        errors.append(f'"{path}.{key}" must be {kind}')
    return value


def _model_index_errors(value: Any) -> list[str]:
    if not isinstance(value, list):
        return ['"model-index" must be an array']
    errors: list[str] = []
    is_str, is_list = (lambda v: isinstance(v, str)), (lambda v: isinstance(v, list))
    is_dict = lambda v: isinstance(v, dict)  # noqa: E731
    for i, model in enumerate(value):
        where = f"model-index[{i}]"
        if not isinstance(model, dict):
            errors.append(f'"{where}" must be an object')
            continue
        _need(errors, model, where, "name", is_str, "a string")
        for j, result in enumerate(_need(errors, model, where, "results", is_list, "an array") or []):
            at = f"{where}.results[{j}]"
            task = _need(errors, result, at, "task", is_dict, "an object")
            if isinstance(task, dict):
                _need(errors, task, f"{at}.task", "type", is_str, "a string")
            dataset = _need(errors, result, at, "dataset", is_dict, "an object")
            if isinstance(dataset, dict):
                _need(errors, dataset, f"{at}.dataset", "type", is_str, "a string")
                _need(errors, dataset, f"{at}.dataset", "name", is_str, "a string")
            for k, metric in enumerate(_need(errors, result, at, "metrics", is_list, "an array") or []):
                _need(errors, metric, f"{at}.metrics[{k}]", "type", is_str, "a string")
                _need(errors, metric, f"{at}.metrics[{k}]", "value", lambda v: True, "a value")
    return errors


def validate_metadata(content: str, repo_type: str) -> tuple[list[str], list[str]]:
    """The errors and warnings of a README's metadata (see the module docstring for the rules)."""
    try:
        data = front_matter(content)
    except (ValueError, yaml.YAMLError) as e:
        return [f"Invalid YAML metadata: {' '.join(str(e).split())}"], []
    if not data:
        return [], [EMPTY_WARNING]
    errors = _license_errors(data["license"]) if data.get("license") is not None else []
    for key in ("tags", "datasets", "language"):
        if data.get(key) is not None and not _strings(data[key]):
            errors.append(f'"{key}" must be a string or an array of strings')
    if repo_type == "model" and "model-index" in data:
        errors += _model_index_errors(data["model-index"])
    return errors, []
