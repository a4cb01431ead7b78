"""Everything hubft does with a Hugging Face Hub: pushing fine-tuned models, cards, and a local Hub-compatible
server (:mod:`hubft.hub.server`) for offline development and hermetic tests."""
