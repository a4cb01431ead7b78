"""Everything hubft does with a Hugging Face Hub: pushing fine-tuned models with their cards, pulling them back,
retrying what fails transiently, and a local Hub-compatible server (:mod:`hubft.hub.server`) for offline
development and hermetic tests."""

from hubft.hub.card import render_model_card, validate_model_card, write_model_card
from hubft.hub.push import UPLOAD_ALLOWLIST, pull_from_hub, push_to_hub
from hubft.hub.repo_id import check_repo_id
from hubft.hub.retry import DEFAULT_RETRY, RetryPolicy, call_with_retry, is_transient, status_of

__all__ = [
    "DEFAULT_RETRY",
    "RetryPolicy",
    "call_with_retry",
    "is_transient",
    "status_of",
    "UPLOAD_ALLOWLIST",
    "check_repo_id",
    "pull_from_hub",
    "push_to_hub",
    "render_model_card",
    "validate_model_card",
    "write_model_card",
]
