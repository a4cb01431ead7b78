"""Keep ``datasets`` talking to ``HF_ENDPOINT`` only.

A plain ``datasets.load_dataset("owner/name")`` contacts two hosts besides the configured Hub, and
``HF_HUB_DISABLE_TELEMETRY`` stops neither: a download-count ``HEAD`` to a fixed S3 URL, and a lookup on
``datasets-server.<endpoint host>`` (a DNS query for a name that usually does not exist, which can stall a load on
a slow resolver). Both flags are read by ``datasets`` at call time, so flipping them just before a load is enough.
"""

from __future__ import annotations

import os

__all__ = ["disable_datasets_extra_hosts"]


def disable_datasets_extra_hosts() -> None:
    """Stop ``datasets`` from contacting any host other than the Hub endpoint.

    Turns off the download-count ping (``datasets.config.HF_UPDATE_DOWNLOAD_COUNTS``) and the dataset-viewer lookup
    (``datasets.config.USE_PARQUET_EXPORT``) for this process, and sets ``HF_UPDATE_DOWNLOAD_COUNTS=0`` in the
    environment so that child processes that import ``datasets`` afresh start with the ping off too. The viewer
    lookup has no environment variable; child processes that load from a Hub must call this function themselves.

    Safe to call any number of times. hubft calls it before every load from a Hub.

    Examples:
        >>> disable_datasets_extra_hosts()
        >>> import datasets
        >>> datasets.config.USE_PARQUET_EXPORT, datasets.config.HF_UPDATE_DOWNLOAD_COUNTS
        (False, False)
    """
    os.environ["HF_UPDATE_DOWNLOAD_COUNTS"] = "0"
    import datasets

    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
    datasets.config.USE_PARQUET_EXPORT = False
