"""Checkpoints too large to hold twice: safetensors files read tensor by tensor and written in
shards, as Hugging Face lays out a large model (``model.safetensors`` or
``model-00001-of-00003.safetensors`` ... with ``model.safetensors.index.json``).

A :class:`LazyState` maps each name to a tensor backed by the file's pages (safetensors maps
the file; no copy is made), so what a reader touches is paged in from disk and can be paged
out again: a model's weights never need to be in memory as a whole. A :class:`ShardWriter`
writes tensors as they come, holding at most one shard.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from modeconn.errors import CheckpointError

__all__ = ["INDEX", "LazyState", "ShardWriter"]

INDEX = "model.safetensors.index.json"
"""The name of a sharded checkpoint's index: ``{"weight_map": {tensor: shard file}}``."""


class LazyState(Mapping[str, torch.Tensor]):
    """The tensors of a safetensors checkpoint — one ``.safetensors`` file, or a folder holding
    one, or a sharded one with its :data:`INDEX` — read on access, backed by the file.

    Tensors are read-only views of the file's pages: copy one (``t.clone()``) to change it."""

    def __init__(self, path: str | os.PathLike):
        from safetensors import SafetensorError, safe_open

        self.path = Path(path)
        files = _shards(self.path)
        self._handles = []
        self._where: dict[str, int] = {}
        for i, file in enumerate(files):
            try:
                handle = safe_open(file, framework="pt")
            except (SafetensorError, OSError) as e:
                raise CheckpointError(
                    f"cannot read {os.fspath(file)!r} as safetensors ({type(e).__name__}: {e}); "
                    f"pass a .safetensors file or a folder of shards with {INDEX}"
                ) from e
            self._handles.append(handle)
            for name in handle.keys():
                self._where[name] = i
        # by name, however the tensors are sharded: two checkpoints of one model list alike
        self._where = dict(sorted(self._where.items()))

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._handles[self._where[name]].get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def shape(self, name: str) -> torch.Size:
        """A tensor's shape, without reading it."""
        return torch.Size(self._handles[self._where[name]].get_slice(name).get_shape())

    def __repr__(self) -> str:
        return f"<LazyState {os.fspath(self.path)!r}: {len(self)} tensors in {len(self._handles)} file(s)>"


def _shards(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise CheckpointError(
            f"no checkpoint at {os.fspath(path)!r}: give a .safetensors file or a folder of shards"
        )
    index = path / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{os.fspath(index)!r} is not a shard index ({e!r})") from e
        return [path / name for name in dict.fromkeys(weight_map.values())]
    files = sorted(path.glob("*.safetensors"))
    if len(files) != 1:
        found = "no .safetensors file" if not files else f"{len(files)} .safetensors files and no {INDEX}"
        raise CheckpointError(
            f"{os.fspath(path)!r} holds {found}: give the file, or the shards with their index"
        )
    return files


class ShardWriter:
    """Writes a checkpoint as shards of at most ``max_shard_bytes`` (a tensor larger than that
    gets a shard of its own) with their :data:`INDEX`, into a new folder ``path``. Nothing is
    at ``path`` until :meth:`close` renames the finished folder there, so an interrupted write
    leaves no half checkpoint; an existing ``path`` is refused."""

    def __init__(self, path: str | os.PathLike, max_shard_bytes: int = 2 << 30):
        self.path = Path(path)
        if self.path.exists():
            raise CheckpointError(f"{os.fspath(self.path)!r} exists: give a new folder for the checkpoint")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"))
        self.max_shard_bytes = max_shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._bytes = 0
        self._files: list[list[str]] = []

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue one tensor (copied if it is a view of something larger); a full shard is written."""
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[name] = tensor.detach().contiguous().cpu()
        self._bytes += size

    def _flush(self) -> None:
        from safetensors.torch import save_file

        number = len(self._files) + 1
        save_file(self._pending, self._tmp / f"part-{number:05d}.safetensors")
        self._files.append(list(self._pending))
        self._pending, self._bytes = {}, 0

    def close(self) -> Path:
        """Write what is left and the index, and move the folder into place."""
        if self._pending or not self._files:
            self._flush()
        n = len(self._files)
        weight_map = {}
        for i, names in enumerate(self._files, 1):
            final = f"model-{i:05d}-of-{n:05d}.safetensors"
            os.replace(self._tmp / f"part-{i:05d}.safetensors", self._tmp / final)
            weight_map.update(dict.fromkeys(names, final))
        (self._tmp / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Remove what was written."""
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()
