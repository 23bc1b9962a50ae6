"""Corpora, calibration sampling and evaluation windows.

Offline defaults (see `packaged`): ``wikipedia`` (English Wikipedia articles) for evaluation and
``c4`` (real C4 documents) for calibration. Also accepted: a local text file, or the `datasets`
names ``wikitext2`` and ``c4-hub`` where a hub is reachable. When calibration and evaluation use
the same corpus, its documents are split in two so the texts never overlap.
"""

from __future__ import annotations

import hashlib
import html
import logging
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

from .packaged import PACKAGED_TEXT, fetch

log = logging.getLogger(__name__)

MIN_DOC_WORDS = 30  # shorter Wikipedia articles are stubs (a title and a line)


def clean_wikipedia(raw: str) -> list[str]:
    """WikiExtractor ``<doc>`` format to articles: entities unescaped, tags and stubs dropped."""
    docs = []
    for chunk in re.split(r"<doc [^>]*>", raw):
        text = html.unescape(chunk.replace("</doc>", "")).strip()
        if len(text.split()) >= MIN_DOC_WORDS:
            docs.append(text)
    return docs


def clean_lines(raw: str) -> list[str]:
    """One document per line (C4 format), entities unescaped, empty lines dropped."""
    return [html.unescape(line).strip() for line in raw.splitlines() if line.strip()]


def _hub_corpus(name: str) -> list[str]:
    try:
        from datasets import load_dataset
    except ImportError:
        raise ValueError(f"corpus {name!r} needs the `datasets` package: pip install 'msp-callback[hub]'") from None
    if name == "wikitext2":
        rows = load_dataset("wikitext", "wikitext-2-raw-v1", split="test")["text"]
        return ["".join(rows)]
    rows = load_dataset("allenai/c4", data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"}, split="validation")
    return list(rows["text"])


def load_corpus(name: str) -> list[str]:
    """Documents of a corpus: a packaged name, a hub name, or a path to a UTF-8 text file
    (documents separated by blank lines)."""
    if name in PACKAGED_TEXT:
        raw = fetch(PACKAGED_TEXT[name], "text").read_text(encoding="utf-8")
        return clean_wikipedia(raw) if name == "wikipedia" else clean_lines(raw)
    if name in ("wikitext2", "c4-hub"):
        return _hub_corpus(name)
    path = Path(name)
    if path.is_file():
        docs = [d.strip() for d in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")) if d.strip()]
        if not docs:
            raise ValueError(f"text file {path} is empty")
        return docs
    raise ValueError(
        f"unknown corpus {name!r}: use one of {sorted(PACKAGED_TEXT)} (packaged, offline), "
        "'wikitext2' or 'c4-hub' (needs a dataset hub), or a path to a text file"
    )


def split_documents(docs: list[str], part: str) -> list[str]:
    """Disjoint halves of one corpus: ``part='calibration'`` the first, ``'evaluation'`` the second.

    A single-document corpus is split in the middle of its text."""
    if len(docs) == 1:
        text = docs[0]
        half = len(text) // 2
        return [text[:half]] if part == "calibration" else [text[half:]]
    half = len(docs) // 2
    return docs[:half] if part == "calibration" else docs[half:]


def tokenize(tokenizer, docs: list[str]) -> Tensor:
    """One token stream: documents joined by a blank line, no special tokens."""
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    for i, doc in enumerate(ids):
        if i:
            stream.extend(sep)
        stream.extend(doc)
    return torch.tensor(stream, dtype=torch.long)


def wants_bos(tokenizer) -> bool:
    """Whether the tokenizer itself puts a BOS token first (so windows should start with one)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos


def _with_bos(windows: Tensor, bos_token_id: int | None) -> Tensor:
    if bos_token_id is None:
        return windows
    bos = torch.full((windows.shape[0], 1), bos_token_id, dtype=windows.dtype)
    return torch.cat([bos, windows], dim=1)


def evaluation_windows(tokens: Tensor, seqlen: int, max_windows: int | None = None, bos_token_id: int | None = None,
                       what: str = "text", option: str = "seqlen") -> Tensor:
    """Non-overlapping windows (n, seqlen) from the start of ``tokens``; with a BOS id each window
    is BOS + (seqlen - 1) text tokens. ``what`` and ``option`` name the text and the window length
    in errors, as the caller's user knows them (``--eval-seqlen``)."""
    body = seqlen - (bos_token_id is not None)
    n = tokens.numel() // body
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"{what} has {tokens.numel()} tokens, too few for one window of {seqlen} ({option}): give a "
                         "shorter window or a longer text")
    return _with_bos(tokens[: n * body].reshape(n, body), bos_token_id)


def sample_calibration(
    tokens: Tensor,
    num_samples: int,
    seqlen: int,
    seed: int = 0,
    bos_token_id: int | None = None,
    batch_size: int = 8,
    what: str = "calibration text",
    options: tuple[str, str] = ("num_samples", "seqlen"),
) -> list[Tensor]:
    """``num_samples`` random windows of ``seqlen`` tokens from a token stream, seeded, in
    batches of up to ``batch_size`` (larger batches run about 2x faster per token on CPU).
    ``what`` and ``options`` name the text and the two numbers in errors, as the caller's user
    knows them (``--fitness-samples``, ``--fitness-seqlen``)."""
    if num_samples < 1:
        raise ValueError(f"{options[0]} must be at least 1, got {num_samples}")
    body = seqlen - (bos_token_id is not None)
    if tokens.numel() <= body:
        raise ValueError(f"{what} has {tokens.numel()} tokens, too few for windows of {seqlen} ({options[1]}): give "
                         "shorter windows or a longer text")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - body, (num_samples,), generator=gen)
    windows = torch.stack([tokens[s : s + body] for s in starts.tolist()])
    return list(_with_bos(windows, bos_token_id).split(batch_size))


def token_digest(batches: Iterable[Tensor]) -> str:
    """SHA-256 of token-id tensors, shapes included: a resumed stage is only valid on the same data."""
    digest = hashlib.sha256()
    for tensor in batches:
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().to(torch.int64).numpy().tobytes())
    return digest.hexdigest()
