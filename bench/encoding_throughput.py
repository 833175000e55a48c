"""Encoding throughput and the cost of the incremental daily refresh (components/representations/).

Measures, on this machine:

1. text: ``--texts`` real catalogue titles (random sample, seed 0) through the default TextEncoder
   (all-MiniLM-L6-v2), items/s, model load excluded (reported separately);
2. images: ``--photos`` real product photos through the MobileNet-v1 int8 encoder, items/s, with the
   share spent decoding and resizing (timed separately on the same photos);
3. the daily refresh: the demo marketplace's ads (the simulator's day 0, ``simulator.n_initial_ads``
   ads, and day 1, ``simulator.new_ads_per_day`` new ads) refreshed into the text and visual vector
   stores (a) incrementally, with day 0 already stored, (b) as a full recompute from an empty store,
   and (c) re-run on an unchanged day.

Prints one JSON object (command, machine, versions, figures); docs/benchmarks.md records a run.

    .venv/bin/python bench/encoding_throughput.py
    .venv/bin/python bench/encoding_throughput.py --texts 500 --photos 200   # quick run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_model  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _machine() -> dict[str, Any]:
    cpu = cpu_model()
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        # The dev box is shared: a load above the core count means the figures are pessimistic.
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for pkg in ("numpy", "pyarrow", "torch", "sentence-transformers", "transformers", "ai-edge-litert", "pillow"):
        out[pkg] = version(pkg)
    return out


def bench_text(titles: list[str]) -> dict[str, Any]:
    from components.representations.text import TextEncoder

    t0 = time.perf_counter()
    enc = TextEncoder()
    load_s = time.perf_counter() - t0
    enc.encode(titles[:64])  # warm-up: first call allocates the thread pool and kernels
    t0 = time.perf_counter()
    x = enc.encode(titles)
    s = time.perf_counter() - t0
    return {
        "encoder": enc.name, "dim": enc.dim, "items": len(titles), "model_load_s": round(load_s, 2),
        "seconds": round(s, 2), "items_per_s": round(len(titles) / s, 1), "shape": list(x.shape),
    }


def bench_images(photos: list[bytes], model: Path) -> dict[str, Any]:
    from components.representations.visual import MobileNetEncoder, decode_jpegs, prepare_batch

    enc = MobileNetEncoder(model)
    enc.encode(photos[:32])  # warm-up
    t0 = time.perf_counter()
    x = enc.encode(photos)
    s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for start in range(0, len(photos), enc.batch_size):
        prepare_batch(decode_jpegs(photos[start : start + enc.batch_size]), enc.image_size)
    prep_s = time.perf_counter() - t0
    return {
        "encoder": enc.name, "dim": enc.dim, "items": len(photos), "batch_size": enc.batch_size,
        "seconds": round(s, 2), "items_per_s": round(len(photos) / s, 1),
        "decode_and_resize_s": round(prep_s, 2), "decode_and_resize_share": round(prep_s / s, 3),
        "shape": list(x.shape),
    }


def bench_daily_refresh(shared_data: Path, n_users: int) -> dict[str, Any]:
    """Incremental vs full refresh of the demo's day-1 ads, both spaces."""
    import numpy as np
    import pyarrow.compute as pc

    from components.config import load_settings
    from components.representations.text import make_text_encoder
    from components.representations.vector_store import refresh_ad_vectors
    from components.representations.visual import make_image_encoder
    from components.sources.simulator import simulate

    def settings_at(home: str) -> Any:
        return load_settings(
            environ={},
            overrides={"home": home, "pipeline": {"shared_data": str(shared_data)}, "simulator": {"n_users": n_users}},
        ).resolved()

    with tempfile.TemporaryDirectory() as tmp:
        base = settings_at(str(Path(tmp) / "sim"))
        start = base.pipeline.start_date
        ads = simulate(base, start, days=2)["ads"].sort_by("ad_id")
        day1_start = dt.datetime(start.year, start.month, start.day, tzinfo=dt.timezone.utc) + dt.timedelta(days=1)
        is_day0 = pc.less(ads["created_at"], pc.cast(day1_start, ads["created_at"].type)).to_numpy(
            zero_copy_only=False
        )
        ids = ads["ad_id"].to_numpy()
        text_enc, image_enc = make_text_encoder(base), make_image_encoder(base)
        spaces = {"text": (ads["title"], text_enc), "visual": (ads["image"], image_enc)}
        out: dict[str, Any] = {
            "ads_day0": int(is_day0.sum()),
            "ads_day1_new": int((~is_day0).sum()),
            "ads_with_photo": int(pc.sum(pc.is_valid(ads["image"])).as_py()),
        }
        for space, (contents, enc) in spaces.items():
            # (a) incremental: day 0 is stored (untimed), then the day-1 refresh over every ad known so far.
            inc = settings_at(str(Path(tmp) / f"inc-{space}"))
            refresh_ad_vectors(inc, space, ids[is_day0], contents.filter(is_day0), enc, progress=False)
            incremental = refresh_ad_vectors(inc, space, ids, contents, enc, progress=False)
            rerun = refresh_ad_vectors(inc, space, ids, contents, enc, progress=False)
            # (b) full recompute of every ad from an empty store.
            full_settings = settings_at(str(Path(tmp) / f"full-{space}"))
            full = refresh_ad_vectors(full_settings, space, ids, contents, enc, progress=False)
            out[space] = {
                "incremental": incremental.to_dict(),
                "rerun_same_day": rerun.to_dict(),
                "full_recompute": full.to_dict(),
                "full_over_incremental_time": round(full.seconds / max(incremental.seconds, 1e-9), 1),
            }
            assert incremental.items_encoded <= out["ads_day1_new"] and rerun.items_encoded == 0
            assert np.isclose(full.items_encoded + full.items_without_input, ids.size)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=5_000, help="catalogue titles to encode")
    parser.add_argument("--photos", type=int, default=2_000, help="product photos to encode")
    parser.add_argument("--sim-users", type=int, default=200, help="simulator users (ads do not depend on it)")
    parser.add_argument("--shared-data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()

    import numpy as np

    from components.representations.visual import MOBILENET_FILE
    from components.sources.fashion import load_catalog

    started = time.perf_counter()
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": _machine(),
        "versions": _versions(),
    }
    cat = load_catalog(args.shared_data)
    rng = np.random.default_rng(0)
    title_rows = np.sort(rng.choice(cat.n_products, min(args.texts, cat.n_products), replace=False))
    titles = cat.title.take(title_rows).to_pylist()
    photo_ids = cat.product_id[cat.has_photo]
    photo_ids = np.sort(rng.choice(photo_ids, min(args.photos, photo_ids.size), replace=False))
    photos = cat.photos(photo_ids).to_pylist()

    result["text"] = bench_text(titles)
    result["images"] = bench_images(photos, args.shared_data / "models" / MOBILENET_FILE)
    result["daily_refresh"] = bench_daily_refresh(args.shared_data, args.sim_users)
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
