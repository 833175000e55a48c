"""Image encoders for ad photos: JPEG bytes to L2-normalised visual vectors.

Two implementations of one small interface (:class:`ImageEncoder`):

- :class:`MobileNetEncoder` (the default): the int8 MobileNet-v1 ImageNet embedding extractor in
  ``<shared_data>/models`` run with ``ai-edge-litert``. Photos are decoded (Pillow, one call per photo:
  unavoidable), padded to a square and resized to 224x224 in batched numpy, then run through the
  interpreter with its input resized to the whole batch. The 1024-d uint8 output is dequantised with the
  output tensor's (scale, zero_point) and L2-normalised.
- :class:`SentenceTransformerImageEncoder`: any local SentenceTransformer image model (e.g. CLIP);
  the model's own processor resizes.

Encoders never see ads without a photo: the vector store gives those a zero vector and
``has_input=False`` (docs/representations.md).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from components.representations.text import embedding_dimension, load_sentence_transformer, model_fingerprint

if TYPE_CHECKING:
    from components.config import Settings

MOBILENET_FILE = "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"
# Product photos are shot on white; padding a portrait photo to a square with white keeps its shape
# (stretching it distorts the garment) and adds nothing the model reads as content.
PAD_VALUE = 255


@runtime_checkable
class ImageEncoder(Protocol):
    """What the vector store needs from an image model."""

    name: str  # stable identifier of the model (part of every content hash)
    dim: int

    def encode(self, jpegs: Sequence[bytes]) -> np.ndarray:
        """float32 [n, dim], rows L2-normalised."""
        ...


def decode_jpegs(jpegs: Sequence[bytes]) -> list[np.ndarray]:
    """Decode each photo to uint8 RGB [h, w, 3]. Raises ValueError naming the first undecodable one."""
    from PIL import Image

    images = []
    for i, data in enumerate(jpegs):
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
            raise ValueError(f"image {i} of {len(jpegs)} is empty or not bytes ({type(data).__name__})")
        try:
            with Image.open(io.BytesIO(data)) as im:
                images.append(np.asarray(im.convert("RGB")))
        except Exception as exc:  # Pillow raises several types for corrupt data
            raise ValueError(f"image {i} of {len(jpegs)} is not a decodable image: {exc}") from exc
    return images


def decodable_images(jpegs: Sequence[bytes | None]) -> list[bool]:
    """Which items are images Pillow can fully decode (a truncated JPEG passes a header check but not
    this); None and empty bytes are False. Small photos decode in well under a millisecond."""
    import io

    from PIL import Image

    ok = []
    for data in jpegs:
        if not isinstance(data, (bytes, bytearray)) or not data:
            ok.append(False)
            continue
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
            ok.append(True)
        except Exception:  # Pillow raises many types for corrupt data  # noqa: BLE001
            ok.append(False)
    return ok


def pad_to_square(images: np.ndarray, value: int = PAD_VALUE) -> np.ndarray:
    """Centre a batch uint8 [n, h, w, c] on a square canvas of side max(h, w), filled with ``value``."""
    n, h, w, c = images.shape
    side = max(h, w)
    if h == w:
        return images
    out = np.full((n, side, side, c), value, dtype=images.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[:, top : top + h, left : left + w] = images
    return out


def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (lo, hi) and weight of hi for each output pixel (half-pixel centres, as Pillow
    and TF's ``half_pixel_centers`` do)."""
    pos = (np.arange(n_out, dtype=np.float32) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a batch uint8 [n, h, w, c] to uint8 [n, size, size, c], in numpy: two
    separable passes of gathers and a weighted sum over the whole batch, no Python per pixel."""
    n, h, w, c = images.shape
    if h == size and w == size:
        return images
    y_lo, y_hi, wy = _bilinear_taps(h, size)
    x_lo, x_hi, wx = _bilinear_taps(w, size)
    # Width pass first, on the small image: [n, h, size, c]; lo + w * (hi - lo) with in-place updates
    # keeps the number of full-size float temporaries (the cost here is memory traffic) low.
    cols = images[:, :, x_lo].astype(np.float32)
    cols += wx[None, None, :, None] * (images[:, :, x_hi] - cols)
    out = cols[:, y_lo]  # height pass: [n, size, size, c]
    out += wy[None, :, None, None] * (cols[:, y_hi] - out)
    np.rint(out, out=out)  # a convex mix of uint8 values stays inside [0, 255]
    return out.astype(np.uint8)


def prepare_batch(images: list[np.ndarray], size: int) -> np.ndarray:
    """Decoded photos of any sizes to one uint8 [n, size, size, 3] batch: photos of the same shape are
    padded and resized together (a catalogue has few distinct shapes), then put back in order."""
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    shapes: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(images):
        shapes.setdefault(im.shape, []).append(i)
    for idx in shapes.values():
        group = np.stack([images[i] for i in idx])
        out[idx] = resize_bilinear(pad_to_square(group), size)
    return out


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (an all-zero row stays zero instead of becoming NaN)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norm, 1e-12), dtype=np.float32)


class MobileNetEncoder:
    """MobileNet-v1 (ImageNet, int8) embeddings of ad photos, run by LiteRT on the CPU.

    Args:
        model_path: the ``.tflite`` embedding extractor (uint8 [1, 224, 224, 3] in, uint8 [1, 1, 1, D] out).
        batch_size: photos per interpreter call (the input tensor is resized to the batch).
        num_threads: interpreter threads; default ``os.cpu_count()``.

    Attributes:
        name: ``"mobilenet:<file stem>:<fingerprint>"``; dim: D (1024).

    Example::

        enc = MobileNetEncoder("../shared/data/models/" + MOBILENET_FILE)
        enc.encode([jpeg_bytes, other_jpeg]).shape  # (2, 1024), rows unit-norm
    """

    def __init__(
        self, model_path: str | os.PathLike[str], batch_size: int = 32, num_threads: int | None = None
    ) -> None:
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"image model not found at {path}; the default is {MOBILENET_FILE} in "
                "<shared_data>/models (settings.pipeline.shared_data), or set representations.image_model"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        from ai_edge_litert.interpreter import Interpreter

        self.model_path = path
        self.batch_size = batch_size
        self._interpreter = Interpreter(model_path=str(path), num_threads=num_threads or os.cpu_count() or 1)
        inp = self._interpreter.get_input_details()[0]
        out = self._interpreter.get_output_details()[0]
        shape = [int(s) for s in inp["shape"]]
        if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3 or inp["dtype"] != np.uint8:
            raise ValueError(f"{path}: expected a uint8 [1, S, S, 3] image input, got {inp['dtype']} {shape}")
        self._input_index = int(inp["index"])
        self._output_index = int(out["index"])
        self.image_size = shape[1]
        scale, zero_point = out["quantization"]
        # A float model reports (0.0, 0): nothing to dequantise.
        self._out_scale = float(scale) if scale else 1.0
        self._out_zero = int(zero_point) if scale else 0
        self.dim: int = int(np.prod(out["shape"][1:]))
        self.name: str = f"mobilenet:{path.stem}:{model_fingerprint(path)}"
        self._batch_allocated = 0

    def _run(self, batch: np.ndarray) -> np.ndarray:
        n = batch.shape[0]
        if n != self._batch_allocated:  # resizing and re-allocating costs ms: only when the size changes
            self._interpreter.resize_tensor_input(self._input_index, [n, self.image_size, self.image_size, 3])
            self._interpreter.allocate_tensors()
            self._batch_allocated = n
        self._interpreter.set_tensor(self._input_index, batch)
        self._interpreter.invoke()
        raw = self._interpreter.get_tensor(self._output_index).reshape(n, self.dim)
        return (raw.astype(np.float32) - self._out_zero) * self._out_scale

    def encode(self, jpegs: Sequence[bytes]) -> np.ndarray:
        """float32 [n, dim], L2-normalised rows, in the order of ``jpegs``."""
        jpegs = list(jpegs)
        out = np.empty((len(jpegs), self.dim), dtype=np.float32)
        for start in range(0, len(jpegs), self.batch_size):
            chunk = jpegs[start : start + self.batch_size]
            pixels = prepare_batch(decode_jpegs(chunk), self.image_size)
            out[start : start + len(chunk)] = self._run(pixels)
        return l2_normalise(out)

    def __repr__(self) -> str:
        return f"MobileNetEncoder(name={self.name!r}, dim={self.dim})"


class SentenceTransformerImageEncoder:
    """Any local SentenceTransformer model that embeds images (e.g. a CLIP folder).

    Args:
        model_path: the model folder. batch_size: photos per forward pass.

    Attributes:
        name: ``"st-image:<folder>:<fingerprint>"``; dim: the model's embedding size.
    """

    def __init__(self, model_path: str | os.PathLike[str], batch_size: int = 32) -> None:
        path = Path(model_path).expanduser()
        self.model_path = path
        self.batch_size = batch_size
        self._model: Any = load_sentence_transformer(path)
        self.dim: int = embedding_dimension(self._model)
        self.name: str = f"st-image:{path.name}:{model_fingerprint(path)}"

    def encode(self, jpegs: Sequence[bytes]) -> np.ndarray:
        """float32 [n, dim], L2-normalised rows (the model's processor resizes the photos)."""
        import torch
        from PIL import Image

        jpegs = list(jpegs)
        if not jpegs:
            return np.zeros((0, self.dim), dtype=np.float32)
        images = [Image.fromarray(a) for a in decode_jpegs(jpegs)]
        with torch.inference_mode():
            out = self._model.encode(
                images,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return l2_normalise(out)

    def __repr__(self) -> str:
        return f"SentenceTransformerImageEncoder(name={self.name!r}, dim={self.dim})"


def default_image_model_path(settings: Settings) -> Path:
    """``<shared_data>/models/<MobileNet-v1 embedding extractor>``."""
    return Path(settings.shared_data) / "models" / MOBILENET_FILE


def make_image_encoder(settings: Settings) -> ImageEncoder:
    """The image encoder the configuration names (``representations.image_encoder``, ``image_model``,
    ``image_batch_size``)."""
    reps = settings.representations
    if reps.image_encoder == "mobilenet":
        path = Path(reps.image_model) if reps.image_model else default_image_model_path(settings)
        return MobileNetEncoder(path, batch_size=reps.image_batch_size)
    if reps.image_encoder == "sentence-transformers":
        if not reps.image_model:
            raise ValueError(
                "representations.image_encoder is 'sentence-transformers' but representations.image_model "
                "is not set: give the folder of a local SentenceTransformer image model (e.g. CLIP)"
            )
        return SentenceTransformerImageEncoder(reps.image_model, batch_size=reps.image_batch_size)
    raise ValueError(f"unknown representations.image_encoder {reps.image_encoder!r}")
