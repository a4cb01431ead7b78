"""disable_datasets_extra_hosts turns off both extra hosts that datasets contacts, for this and child processes."""

from __future__ import annotations

import os

import datasets

from hubft.data import disable_datasets_extra_hosts


def test_both_switches_are_off_and_it_is_idempotent(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", True)
    monkeypatch.setattr(datasets.config, "USE_PARQUET_EXPORT", True)
    monkeypatch.setenv("HF_UPDATE_DOWNLOAD_COUNTS", "1")
    for _ in range(2):
        disable_datasets_extra_hosts()
        assert datasets.config.HF_UPDATE_DOWNLOAD_COUNTS is False
        assert datasets.config.USE_PARQUET_EXPORT is False
        assert os.environ["HF_UPDATE_DOWNLOAD_COUNTS"] == "0"
