"""A local Hugging Face Hub-compatible server.

It speaks the subset of the Hub's HTTP protocol that ``huggingface_hub``, ``timm`` and ``datasets`` use, stores
repos under a local directory, and needs nothing beyond the standard library and hubft's own dependencies.
:class:`LocalHub` runs it in a background thread (tests, notebooks); :func:`serve` runs it in the foreground
(``hubft hub serve``). Module map: ``_app`` (routing, faults, log), ``_api_*`` (endpoints), ``_storage`` (disk
layout of a repo), ``_root`` (all repos: ids, moves), ``_history`` (squash, rewrite, merge), ``_card_rules`` (README
metadata checks), ``_auth`` (identities and rights), ``_users`` (a team's users file), ``_access_log``, ``_fsck``
(storage checks), ``_faults`` (fault plans), ``_server`` (sockets), ``_names`` (input validation).
"""

from ._app import LoggedRequest
from ._faults import FaultKind, FaultPlan, list_fault_kinds
from ._fsck import FsckReport, fsck
from ._local_hub import LocalHub
from ._serve import serve
from ._users import add_token, load_team, revoke_token

__all__ = ["FaultKind", "FaultPlan", "FsckReport", "LocalHub", "LoggedRequest", "add_token", "fsck",
           "list_fault_kinds", "load_team", "revoke_token", "serve"]
