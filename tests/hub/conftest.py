"""The hub fixtures (local_hub, hub, api, repo_id) live in tests/conftest.py, shared by every test package."""
