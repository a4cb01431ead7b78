"""What the preupload call decides for each file: LFS or regular, ignored or not.

The client sends a file as LFS only when the server says so. The rule mirrors the Hub closely enough for every
client flow: LFS when the file is large, when its path matches an LFS pattern of the repo's ``.gitattributes``, or
when its first bytes look binary (a NUL byte); regular otherwise. A new repo starts with the Hub's default
``.gitattributes``, so weights, archives and parquet shards go to LFS by extension.
"""

from __future__ import annotations

import fnmatch

LFS_SIZE_THRESHOLD = 10 * 1024 * 1024

_LFS_SUFFIX = "filter=lfs diff=lfs merge=lfs -text"
_DEFAULT_LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*", "*.mlmodel",
    "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt",
    "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm",
    "*.xz", "*.zip", "*.zst", "*tfevents*",
)
DEFAULT_GITATTRIBUTES = "".join(f"{p} {_LFS_SUFFIX}\n" for p in _DEFAULT_LFS_PATTERNS).encode()


def _matches(path: str, pattern: str) -> bool:
    # gitattributes/gitignore semantics, simplified: a pattern without "/" matches the base name at any depth, one
    # with "/" matches the whole path ("**" works because fnmatch's "*" crosses "/").
    pattern = pattern.lstrip("/")
    if "/" in pattern.rstrip("/"):
        return fnmatch.fnmatchcase(path, pattern)
    return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern.rstrip("/")) or any(
        fnmatch.fnmatchcase(part, pattern.rstrip("/")) for part in path.split("/")[:-1]
    )


def lfs_patterns(gitattributes: str) -> list[str]:
    """The patterns of a ``.gitattributes`` text that route files through LFS (``filter=lfs``)."""
    patterns = []
    for line in gitattributes.splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#") and "filter=lfs" in fields[1:]:
            patterns.append(fields[0])
    return patterns


def wants_lfs(path: str, size: int, sample: bytes, patterns: list[str]) -> bool:
    """Whether a file should be uploaded as LFS (see the module docstring for the rule)."""
    return size >= LFS_SIZE_THRESHOLD or b"\0" in sample or any(_matches(path, p) for p in patterns)


def is_ignored(path: str, gitignore: str | None) -> bool:
    """Whether ``path`` is ignored by a ``.gitignore`` text (last matching pattern wins, ``!`` re-includes)."""
    ignored = False
    for line in (gitignore or "").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if _matches(path, line[1:] if negate else line):
            ignored = not negate
    return ignored
