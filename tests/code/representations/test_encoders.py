"""Text and image encoders and the incremental vector store (components/representations/).

Three kinds of tests: the image pipeline's numpy parts against Pillow; the vector store's incremental
rule, proved by counting what reaches a (real) encoder; and quality on the real fashion catalogue
(nearest neighbours share the article type far above chance).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.representations.vector_store import (
    EncodeReport,
    content_hashes,
    load_ad_vectors,
    refresh_ad_vectors,
    vectors_path,
)
from components.representations.visual import (
    MOBILENET_FILE,
    decode_jpegs,
    l2_normalise,
    pad_to_square,
    prepare_batch,
    resize_bilinear,
)


class CountingEncoder:
    """Wraps an encoder and records every batch it is asked to encode."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name: str = inner.name
        self.dim: int = inner.dim
        self.calls: list[list[Any]] = []

    @property
    def items(self) -> list[Any]:
        return [x for call in self.calls for x in call]

    def encode(self, items: Sequence[Any]) -> np.ndarray:
        self.calls.append(list(items))
        return self.inner.encode(items)


class HashEncoder:
    """A deterministic stand-in (vectors seeded by the content) for the store's error paths."""

    def __init__(self, name: str = "hash-encoder", dim: int = 8) -> None:
        self.name, self.dim = name, dim

    def encode(self, items: Sequence[str]) -> np.ndarray:
        seeds = [int(hashlib.sha256(s.encode()).hexdigest()[:8], 16) for s in items]
        rows = [np.random.default_rng(seed).normal(size=self.dim) for seed in seeds]
        return l2_normalise(np.asarray(rows).reshape(len(items), self.dim))


def _jpeg(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


# --- image preprocessing (no model) -----------------------------------------------------------------


def test_resize_bilinear_matches_pillow_and_keeps_constants() -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, size=(3, 80, 60, 3), dtype=np.uint8)
    ours = resize_bilinear(batch, 224)
    assert ours.shape == (3, 224, 224, 3) and ours.dtype == np.uint8
    for i in range(3):
        ref = np.asarray(Image.fromarray(batch[i]).resize((224, 224), Image.BILINEAR))
        # Same half-pixel-centre bilinear as Pillow's upscaling; rounding differs by at most one level.
        assert np.abs(ours[i].astype(int) - ref.astype(int)).max() <= 1
    flat = np.full((2, 80, 60, 3), 137, dtype=np.uint8)
    assert np.all(resize_bilinear(flat, 224) == 137)


def test_pad_to_square_centres_on_white_and_prepare_batch_keeps_order() -> None:
    img = np.zeros((1, 80, 60, 3), dtype=np.uint8)
    sq = pad_to_square(img)
    assert sq.shape == (1, 80, 80, 3)
    assert np.all(sq[:, :, :10] == 255) and np.all(sq[:, :, 70:] == 255) and np.all(sq[:, :, 10:70] == 0)
    # Mixed shapes are grouped for resizing but come back in input order.
    a = np.full((80, 60, 3), 10, np.uint8)
    b = np.full((60, 60, 3), 200, np.uint8)
    out = prepare_batch([a, b, a], 32)
    assert out.shape == (3, 32, 32, 3)
    assert out[1, 16, 16, 0] == 200 and out[0, 16, 16, 0] == 10 and out[2, 16, 16, 0] == 10


def test_decode_names_the_bad_image() -> None:
    good = _jpeg(np.zeros((8, 8, 3), np.uint8))
    assert decode_jpegs([good])[0].shape == (8, 8, 3)
    with pytest.raises(ValueError, match="image 1 of 2 is not a decodable image"):
        decode_jpegs([good, b"not a jpeg"])
    with pytest.raises(ValueError, match="image 0 of 1 is empty"):
        decode_jpegs([b""])


def test_l2_normalise_leaves_zero_rows_zero() -> None:
    x = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(x, [[0.6, 0.8], [0.0, 0.0]], atol=1e-7)


# --- text encoder ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_encoder():
    from components.representations.text import TextEncoder

    return TextEncoder(batch_size=64)


def test_text_encoder_shapes_norms_and_meaning(text_encoder) -> None:
    assert text_encoder.dim == 384
    assert text_encoder.name.startswith("text:all-MiniLM-L6-v2:")
    x = text_encoder.encode(
        ["Nike Men Black Running Shoes", "Adidas Men Grey Sports Shoes", "Lakme Women Red Lipstick"]
    )
    assert x.shape == (3, 384) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    sim = x @ x.T
    assert sim[0, 1] > sim[0, 2] + 0.2  # two shoes are closer than a shoe and a lipstick
    assert text_encoder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError, match="takes strings"):
        text_encoder.encode(["ok", None])  # type: ignore[list-item]


def test_encoder_name_is_a_content_fingerprint(tmp_path: Path) -> None:
    from components.representations.text import model_fingerprint

    a, b = tmp_path / "a" / "model", tmp_path / "b" / "model"
    for d in (a, b):
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"hidden": 8}))
    assert model_fingerprint(a) == model_fingerprint(b)  # same files, different place
    (b / "config.json").write_text(json.dumps({"hidden": 16}))
    assert model_fingerprint(a) != model_fingerprint(b)
    with pytest.raises(FileNotFoundError, match="model not found"):
        model_fingerprint(tmp_path / "missing")


# --- the incremental vector store ------------------------------------------------------------------


def test_text_refresh_encodes_only_new_or_changed_titles(settings, text_encoder) -> None:
    enc = CountingEncoder(text_encoder)
    ids = np.array([30, 10, 20, 40], dtype=np.int64)
    titles: list[str | None] = ["Puma Men Blue Sneakers", "Titan Women Gold Watch", None, "Titan Women Gold Watch"]

    first = refresh_ad_vectors(settings, "text", ids, titles, enc, progress=False)
    assert (first.items_total, first.items_encoded, first.items_reused, first.items_without_input) == (4, 3, 0, 1)
    # The two ads with the same title were encoded once; the ad without a title never reached the model.
    assert sorted(enc.items) == ["Puma Men Blue Sneakers", "Titan Women Gold Watch"]
    path = vectors_path(settings, "text")
    stamp = path.stat().st_mtime_ns

    # Same day again: nothing is encoded and the file is not rewritten.
    enc.calls.clear()
    again = refresh_ad_vectors(settings, "text", ids, titles, enc, progress=False)
    assert enc.calls == [] and again.items_encoded == 0 and again.items_reused == 3
    assert path.stat().st_mtime_ns == stamp

    # Two new ads (one reusing a stored title) and one changed title: only the new contents go in.
    enc.calls.clear()
    ids2 = np.array([10, 20, 30, 40, 50, 60], dtype=np.int64)
    titles2 = [
        "Titan Women Gold Watch",
        None,
        "Puma Men Black Sneakers",  # ad 30's title changed
        "Titan Women Gold Watch",
        "Fossil Men Brown Wallet",  # new ad, new title
        "Puma Men Blue Sneakers",  # new ad with ad 30's old title: reused by content hash
    ]
    rep = refresh_ad_vectors(settings, "text", ids2, titles2, enc, progress=False)
    assert sorted(enc.items) == ["Fossil Men Brown Wallet", "Puma Men Black Sneakers"]
    assert (rep.items_total, rep.items_encoded, rep.items_reused, rep.items_without_input) == (6, 2, 3, 1)

    store = load_ad_vectors(settings, "text")
    assert store.ad_ids.tolist() == [10, 20, 30, 40, 50, 60] and store.encoder == text_encoder.name
    assert store.has_input.tolist() == [True, False, True, True, True, True]
    expected = text_encoder.encode(["Puma Men Black Sneakers", "Puma Men Blue Sneakers"])
    vec, found = store.lookup(np.array([30, 60, 20, 999, 30]))
    assert found.tolist() == [True, True, False, False, True]
    np.testing.assert_allclose(vec[[0, 1]], expected, atol=1e-5)
    np.testing.assert_array_equal(vec[0], vec[4])
    assert not vec[2].any() and not vec[3].any()  # no title / unknown ad: the zero vector


def test_store_file_layout_and_report(settings) -> None:
    enc = HashEncoder(dim=8)
    rep = refresh_ad_vectors(settings, "text", np.array([5, 1]), ["b", "a"], enc, progress=False)
    assert isinstance(rep, EncodeReport)
    assert set(rep.to_dict()) == {
        "space", "items_total", "items_encoded", "items_reused", "items_without_input", "seconds", "items_per_s",
    }
    table = pq.read_table(settings.embeddings_dir / "text" / "vectors.parquet")
    assert table.schema.field("ad_id").type == pa.int64()
    assert table.schema.field("content_hash").type == pa.string()
    assert table.schema.field("has_input").type == pa.bool_()
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 8)
    assert table.schema.metadata[b"adsrec.encoder"] == b"hash-encoder"
    assert table.schema.metadata[b"adsrec.dim"] == b"8"
    assert table["ad_id"].to_pylist() == [1, 5]
    assert table["content_hash"].to_pylist() == content_hashes("hash-encoder", ["a", "b"])
    assert content_hashes("other", ["a"]) != content_hashes("hash-encoder", ["a"])  # the model is in the key
    assert content_hashes("x", [None, "", b""]) == [None, None, None]


def test_model_change_reencodes_everything(settings) -> None:
    refresh_ad_vectors(settings, "text", np.array([1, 2, 3]), ["a", "b", "c"], HashEncoder("m1", 8), progress=False)
    new = CountingEncoder(HashEncoder("m2", 4))
    rep = refresh_ad_vectors(settings, "text", np.array([1, 2]), ["a", "b"], new, progress=False)
    assert rep.items_encoded == 2 and new.items == ["a", "b"]
    store = load_ad_vectors(settings, "text")
    # Another model's vectors live in another space: ad 3 (not given again) is dropped, not mixed in.
    assert store.encoder == "m2" and store.dim == 4 and store.ad_ids.tolist() == [1, 2]


def test_store_rejects_bad_input(settings) -> None:
    enc = HashEncoder()
    with pytest.raises(ValueError, match="duplicate ad_ids"):
        refresh_ad_vectors(settings, "text", np.array([1, 1]), ["a", "b"], enc, progress=False)
    with pytest.raises(ValueError, match="2 ad_ids but 1 contents"):
        refresh_ad_vectors(settings, "text", np.array([1, 2]), ["a"], enc, progress=False)
    with pytest.raises(ValueError, match="plain folder name"):
        refresh_ad_vectors(settings, "../evil", np.array([1]), ["a"], enc, progress=False)
    with pytest.raises(FileNotFoundError, match="run refresh_ad_vectors"):
        load_ad_vectors(settings, "visual")

    class Broken(HashEncoder):
        def encode(self, items: Sequence[str]) -> np.ndarray:
            return np.zeros((len(items), self.dim + 1), np.float32)

    with pytest.raises(ValueError, match="returned shape"):
        refresh_ad_vectors(settings, "text", np.array([1]), ["a"], Broken(), progress=False)
    assert not vectors_path(settings, "text").exists()  # a failed refresh writes nothing


# --- image encoders --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mobilenet(shared_data: Path):
    from components.representations.visual import MobileNetEncoder

    return MobileNetEncoder(shared_data / "models" / MOBILENET_FILE, batch_size=32)


@pytest.fixture(scope="module")
def catalog(shared_data: Path):
    from components.sources.fashion import load_catalog

    return load_catalog(shared_data)


def test_mobilenet_vectors_are_batch_independent(mobilenet, catalog) -> None:
    ids = catalog.product_id[catalog.has_photo][:7]
    photos = catalog.photos(ids).to_pylist()
    assert mobilenet.dim == 1024 and mobilenet.name.startswith("mobilenet:")
    together = mobilenet.encode(photos)
    assert together.shape == (7, 1024) and together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    # The interpreter's input is resized per batch; a photo's vector must not depend on its batch.
    one_by_one = np.vstack([mobilenet.encode([p]) for p in photos[:3]])
    np.testing.assert_allclose(together[:3], one_by_one, atol=1e-6)
    assert (together >= 0).all()  # dequantised ReLU6 features: never negative
    assert mobilenet.encode([]).shape == (0, 1024)


def test_visual_refresh_skips_ads_without_photo(settings, mobilenet, catalog) -> None:
    with_photo = catalog.product_id[catalog.has_photo][:4]
    without = catalog.product_id[~catalog.has_photo][:2]
    ids = np.concatenate([with_photo, without])
    photos = catalog.photos(ids)  # pa.binary, null for the last two
    enc = CountingEncoder(mobilenet)
    rep = refresh_ad_vectors(settings, "visual", ids, photos, enc, progress=False)
    assert (rep.items_encoded, rep.items_without_input) == (4, 2) and len(enc.items) == 4
    assert refresh_ad_vectors(settings, "visual", ids, photos, enc, progress=False).items_encoded == 0
    assert len(enc.calls) == 1
    store = load_ad_vectors(settings, "visual")
    vec, found = store.lookup(ids)
    assert found.tolist() == [True] * 4 + [False] * 2
    assert not vec[4:].any()


def test_make_image_encoder_checks_its_config(settings, tmp_path: Path) -> None:
    from components.representations.visual import make_image_encoder

    settings.representations.image_encoder = "sentence-transformers"
    with pytest.raises(ValueError, match="image_model is not set"):
        make_image_encoder(settings)
    settings.representations.image_encoder = "mobilenet"
    settings.representations.image_model = str(tmp_path / "nope.tflite")
    with pytest.raises(FileNotFoundError, match="image model not found"):
        make_image_encoder(settings)


def _tiny_clip(folder: Path) -> Path:
    """A randomly initialised, tiny CLIP saved as a local folder (no download): enough to run the
    SentenceTransformer image path end to end."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer

    try:  # transformers 5: the Pillow backend, without the torchvision warning
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor as ImageProcessor

    folder.mkdir(parents=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "a": 3}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    config = CLIPConfig(
        text_config=dict(vocab_size=4, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=8, bos_token_id=0, eos_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=12,
    )
    out = folder / "tiny-clip"
    CLIPModel(config).save_pretrained(out)
    image_processor = ImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


def test_sentence_transformer_image_encoder_runs_a_local_clip(settings, tmp_path: Path) -> None:
    from components.representations.visual import make_image_encoder

    settings.representations.image_encoder = "sentence-transformers"
    settings.representations.image_model = str(_tiny_clip(tmp_path / "models"))
    enc = make_image_encoder(settings)
    assert enc.dim == 12 and enc.name.startswith("st-image:tiny-clip:")
    rng = np.random.default_rng(1)
    photos = [_jpeg(rng.integers(0, 256, (80, 60, 3), dtype=np.uint8)) for _ in range(3)]
    x = enc.encode(photos)
    assert x.shape == (3, 12)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(x[0], x[1])  # different photos, different vectors
    rep = refresh_ad_vectors(settings, "visual", np.array([1, 2, 3, 4]), photos + [None], enc, progress=False)
    assert (rep.items_encoded, rep.items_without_input) == (3, 1)


# --- quality on the real catalogue ------------------------------------------------------------------


def _nearest_neighbour_agreement(x: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(share of items whose cosine nearest other item has the same label, the chance of that for a
    random other item)."""
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    nn = sim.argmax(axis=1)
    rate = float(np.mean(labels[nn] == labels))
    counts = np.bincount(labels)
    chance = float(np.mean((counts[labels] - 1) / (labels.size - 1)))
    return rate, chance


def _stratified_sample(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """About ``n`` row indices, each label represented in proportion to its share (at least one)."""
    picks = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        k = min(members.size, max(1, int(round(n * members.size / labels.size))))
        picks.append(rng.choice(members, k, replace=False))
    return np.sort(np.concatenate(picks))


def test_text_nearest_neighbour_shares_article_type(text_encoder, catalog) -> None:
    """On a stratified sample of 1,541 real catalogue titles (about 1,500, every article_type at least
    once; seed 0), the text nearest neighbour has the same article_type 73.7% of the time against a
    chance of 4.8% (15.2x). With 2,037 titles it was 77.3% (denser samples give closer neighbours).
    Asserted with margin: at least 60% and 8x chance."""
    types = catalog.codes["article_type"]
    idx = _stratified_sample(types, 1_500, np.random.default_rng(0))
    x = text_encoder.encode(catalog.title.take(pa.array(idx)).to_pylist())
    rate, chance = _nearest_neighbour_agreement(x, types[idx])
    assert 0.03 < chance < 0.08
    assert rate >= 0.60, f"text NN same-type rate {rate:.3f} (chance {chance:.3f})"
    assert rate / chance >= 8


def test_mobilenet_nearest_neighbour_shares_article_type(mobilenet, catalog) -> None:
    """On 1,000 real photos (a random sample of the photo set, itself stratified by article_type; seed 0),
    the MobileNet nearest neighbour has the same article_type 64.7% of the time against a chance of
    4.3% (15.0x). The data README reports 72% on 3,000 photos; with 800 it was 62.5%: denser samples
    give closer neighbours. Asserted with margin: at least 52% and 8x chance."""
    ids = np.sort(np.random.default_rng(0).choice(catalog.product_id[catalog.has_photo], 1_000, replace=False))
    x = mobilenet.encode(catalog.photos(ids).to_pylist())
    types = catalog.codes["article_type"][np.searchsorted(catalog.product_id, ids)]
    rate, chance = _nearest_neighbour_agreement(x, types)
    assert 0.03 < chance < 0.08
    assert rate >= 0.52, f"visual NN same-type rate {rate:.3f} (chance {chance:.3f})"
    assert rate / chance >= 8


def test_decodable_images_flags_corrupt_truncated_and_missing_photos(shared_data) -> None:
    import pyarrow.parquet as pq

    from components.representations.visual import decodable_images

    jpegs = pq.read_table(shared_data / "fashion" / "images-00.parquet", columns=["jpeg"]).slice(0, 3)
    good = jpegs.column("jpeg").to_pylist()
    assert decodable_images(good) == [True, True, True]
    truncated = good[0][: len(good[0]) // 2]
    assert decodable_images([b"not a jpeg", truncated, None, b"", good[1]]) == [False, False, False, False, True]
