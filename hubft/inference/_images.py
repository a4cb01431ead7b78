"""Images named on the command line: files, folders (searched recursively) and glob patterns."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from hubft.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "ImageFiles", "collect_images"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def collect_images(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The image files ``inputs`` name, in the order given (a folder's and a pattern's sorted), each once.

    Raises:
        DataError: An input matches nothing, or a folder or pattern holds no image file.
    """
    found: list[Path] = []
    for item in map(str, inputs):
        path = Path(item).expanduser()
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif glob.has_magic(item):
            matches = sorted(p for p in map(Path, glob.glob(os.path.expanduser(item), recursive=True))
                             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            raise DataError(f"{item!r} is no file, folder or glob pattern that exists",
                            fix="check the path; quote a glob pattern so that the shell leaves it to hubft")
        if not matches:
            raise DataError(f"{item!r} holds no image file ({', '.join(IMAGE_SUFFIXES)})",
                            fix="point at image files or a folder of them")
        found.extend(matches)
    return list(dict.fromkeys(found))


class ImageFiles(torch.utils.data.Dataset):
    """``(tensor, index)`` for each file, through ``transform``; a file that does not decode is named in a
    :class:`~hubft.errors.DataError`."""

    def __init__(self, paths: Sequence[Path], transform: Callable[[Any], torch.Tensor]) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image, UnidentifiedImageError

        path = self.paths[index]
        try:
            with Image.open(path) as image:
                image.load()
                return self.transform(image), index
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise DataError(f"cannot decode the image {str(path)!r} ({type(e).__name__})",
                            fix="replace or remove the file") from None
