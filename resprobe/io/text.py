"""Token data for language models: documents cut into windows, each window tagged with its document.

Specs:

- ``text:pydoc``: the English prose of CPython's own ``pydoc_data.topics`` (every Python install has it; no
  download), one document per help topic, in the order of their names;
- ``text:PATH``: a ``.txt`` file (one document), a ``.jsonl`` file (one document per line, its ``text``
  field), or a folder of them (files in sorted order);
- ``SPEC@train`` / ``SPEC@test``: a fixed split of its documents by name — a document is held out for
  ``@test`` when the first byte of the SHA-256 of its name is a multiple of 4 (about a quarter); the rest
  are ``@train``. Training a language model on ``@train`` and probing it on ``@test`` keeps every probe
  on documents it never saw.

Tokens come from the model's tokenizer, or from the UTF-8 bytes (``tokenizer=None``: a vocabulary of 256,
for byte-level models). Each document is cut into non-overlapping windows of ``seq_len + 1`` tokens (the
inputs and, shifted by one, the next-token targets); a document's remainder shorter than a window is left
out. Every window keeps its document's number, so that confidence intervals resample documents, not
windows or tokens. Bad input is one line: an empty or binary file, invalid UTF-8, a JSON line without a
``text`` string, no document long enough for one window, or a tokenizer whose ids exceed the model's
embedding.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .data import DataError

__all__ = ["TextData", "load_text", "documents", "byte_tokens", "check_vocabulary", "held_out", "split_of"]

MAX_FILE_BYTES = 256 * 2 ** 20


@dataclass
class TextData:
    """Windows of ``seq_len + 1`` token ids ``(W, seq_len + 1)``, the document of each window ``(W,)``, the
    documents' names, and where they came from."""

    ids: torch.Tensor
    docs: torch.Tensor
    names: list[str]
    spec: str
    tokenizer: str
    source: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def seq_len(self) -> int:
        return self.ids.shape[1] - 1

    @property
    def n_documents(self) -> int:
        return len(torch.unique(self.docs))

    def inputs_and_targets(self, rows) -> tuple[torch.Tensor, torch.Tensor]:
        """Input ids ``(n, seq_len)`` and next-token targets ``(n, seq_len)`` of the chosen windows."""
        w = self.ids[rows]
        return w[:, :-1], w[:, 1:]

    def batches(self, batch_size: int, normalize=None, device="cpu", augment: bool = False, order=None):
        """``(inputs, targets, rows)`` batches for training: the windows in the random order of the generator
        ``order`` (in order when None); ``normalize`` and ``augment`` do not apply to tokens."""
        perm = torch.randperm(len(self), generator=order) if order is not None else torch.arange(len(self))
        for s in range(0, len(self), batch_size):
            rows = perm[s:s + batch_size]
            x, y = self.inputs_and_targets(rows)
            yield x.to(device), y.to(device), rows

    def subset(self, n: int, seed: int = 0) -> "TextData":
        """A seeded subset of ``n`` windows, in window order (all of them when ``n`` covers them)."""
        if n >= len(self):
            return self
        keep = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return TextData(self.ids[keep], self.docs[keep], self.names, self.spec, self.tokenizer,
                        dict(self.source, limit=n, subset_seed=seed))

    def to(self, device) -> "TextData":
        """The same windows (token ids are moved per batch)."""
        return self

    def describe(self) -> dict:
        return dict(spec=self.spec, tokenizer=self.tokenizer, seq_len=self.seq_len, n_windows=len(self),
                    n_documents=self.n_documents, n_tokens=int(self.ids[:, :-1].numel()), **self.source)


def _read(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: not a file", "text:PATH takes a .txt or .jsonl file, or a folder of them")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path} is empty", "give a file with text in it")
    if size > MAX_FILE_BYTES:
        raise DataError(f"{path} is {size / 2 ** 20:.0f} MiB, over the {MAX_FILE_BYTES // 2 ** 20} MiB limit of one "
                        "text file", "split it into several files in a folder")
    raw = path.read_bytes()
    if b"\x00" in raw[:65536]:
        raise DataError(f"{path} is binary (it holds NUL bytes), not text", "give a UTF-8 .txt or .jsonl file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not valid UTF-8 (byte {e.start})", "convert it to UTF-8") from e


def _jsonl(path: Path) -> list[tuple[str, str]]:
    out = []
    for n, line in enumerate(_read(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise DataError(f"{path}:{n} is not a JSON line ({e.msg})", "one JSON object per line") from e
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise DataError(f"{path}:{n} has no 'text' string", 'write {"text": "..."} on each line')
        out.append((f"{path.name}:{n}", rec["text"]))
    return out


SPLITS = ("train", "test")


def held_out(name: str) -> bool:
    """Whether the document ``name`` belongs to the ``@test`` split (see the module docstring)."""
    import hashlib
    return hashlib.sha256(name.encode("utf-8")).digest()[0] % 4 == 0


def split_of(spec: str) -> tuple[str, Optional[str]]:
    """``(spec without its split, split or None)``."""
    base, at, split = spec.rpartition("@")
    if at and split in SPLITS and base.startswith("text:"):
        return base, split
    return spec, None


def documents(spec: str) -> list[tuple[str, str]]:
    """``(name, text)`` of every document of a ``text:`` spec (of its split, with ``@train``/``@test``)."""
    spec, split = split_of(spec)
    if split is not None:
        docs = [(n, t) for n, t in documents(spec) if held_out(n) == (split == "test")]
        if not docs:
            raise DataError(f"{spec}@{split}: the split holds no document",
                            f"use {spec} whole, or give more documents")
        return docs
    where = spec.split(":", 1)[1].strip() if spec.startswith("text:") else ""
    if not where:
        raise DataError("--data text: names no file", "write text:pydoc or text:PATH")
    if where == "pydoc":
        from pydoc_data.topics import topics
        return [(k, topics[k]) for k in sorted(topics)]
    path = Path(where).expanduser()
    files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path} holds no .txt or .jsonl file", "put the documents in .txt or .jsonl files")
    docs: list[tuple[str, str]] = []
    for f in files:
        if f.suffix == ".jsonl":
            docs += _jsonl(f)
        elif f.suffix == ".txt" or not path.is_dir():
            docs.append((f.name, _read(f)))
    return docs


def byte_tokens(text: str) -> list[int]:
    """The byte-level tokens of a text: its UTF-8 bytes."""
    return list(text.encode("utf-8"))


def check_vocabulary(largest_id: int, vocabulary: int, tokenizer: str) -> None:
    """Token ids must index the model's embedding."""
    if largest_id >= vocabulary:
        raise DataError(f"the tokenizer {tokenizer} gives token id {largest_id}, but the model's embedding holds "
                        f"{vocabulary} tokens", "use the model's own tokenizer (or a byte-level model for bytes)")


def load_text(spec: str, seq_len: int, encode: Optional[Callable[[str], Sequence[int]]] = None,
              tokenizer: str = "bytes", vocabulary: Optional[int] = None) -> TextData:
    """Windows of a ``text:`` spec (see the module docstring); ``encode`` maps a text to token ids (None:
    its UTF-8 bytes), ``vocabulary`` is the model's embedding size (checked)."""
    if not isinstance(seq_len, int) or not 1 <= seq_len <= 2 ** 20:
        raise DataError(f"--seq-len must be a positive integer up to {2 ** 20}, got {seq_len!r}")
    encode = encode or byte_tokens
    windows, owners, names = [], [], []
    longest = 0
    for name, text in documents(spec):
        toks = np.asarray(encode(text), dtype=np.int64)
        longest = max(longest, len(toks))
        n = len(toks) // (seq_len + 1)
        if n == 0:
            continue
        windows.append(toks[: n * (seq_len + 1)].reshape(n, seq_len + 1))
        owners += [len(names)] * n
        names.append(name)
    if not windows:
        raise DataError(f"{spec}: no document holds {seq_len + 1} tokens (the longest holds {longest})",
                        "use a smaller --seq-len or longer documents")
    ids = torch.from_numpy(np.concatenate(windows))
    if vocabulary is not None:
        check_vocabulary(int(ids.max()), vocabulary, tokenizer)
    return TextData(ids, torch.tensor(owners, dtype=torch.long), names, spec, tokenizer)
