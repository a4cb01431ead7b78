"""Everything hubft does with a Hugging Face Hub: pushing fine-tuned models with their cards, pulling them back,
pushing checkpoints during training, and a local Hub-compatible server (:mod:`hubft.hub.server`) for offline
development and hermetic tests."""

from hubft.hub.card import render_model_card, validate_model_card, write_model_card
from hubft.hub.checkpoints import CheckpointPusher, download_checkpoint
from hubft.hub.push import UPLOAD_ALLOWLIST, pull_from_hub, push_to_hub
from hubft.hub.repo_id import check_repo_id

__all__ = [
    "UPLOAD_ALLOWLIST",
    "CheckpointPusher",
    "check_repo_id",
    "download_checkpoint",
    "pull_from_hub",
    "push_to_hub",
    "render_model_card",
    "validate_model_card",
    "write_model_card",
]
