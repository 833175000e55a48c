"""The progress bar over representation encoding (components/representations/vector_store.py, drawn by
components/progress.py): a bar with an ETA when asked for, nothing otherwise. Real text encoder, four titles."""

from __future__ import annotations

import re

import numpy as np
import pytest

TITLES = ["Nike Men Black Running Shoes", "Puma Women Red Top", "Lakme Women Red Lipstick", "Adidas Men Grey Sports Shoes"]
ETA = re.compile(r"\[[^\]\n]*<[^\]\n]*\]")  # tqdm's [elapsed<remaining, rate]


@pytest.fixture(scope="module")
def text_encoder():
    from components.representations.text import TextEncoder

    return TextEncoder(batch_size=64)


@pytest.mark.parametrize(("env", "progress", "drawn"), [("1", True, True), ("0", True, False), ("1", False, False)])
def test_encoding_draws_a_bar_with_an_eta_only_when_asked(settings, text_encoder, monkeypatch, capsys,
                                                          env: str, progress: bool, drawn: bool) -> None:
    from components.representations.vector_store import refresh_ad_vectors

    monkeypatch.setenv("ADSREC_PROGRESS", env)
    report = refresh_ad_vectors(settings, "text", np.arange(1, len(TITLES) + 1), TITLES, text_encoder,
                                progress=progress)
    err = capsys.readouterr().err
    assert report.items_encoded == len(TITLES)
    if drawn:
        assert "encode text" in err and f"{len(TITLES)}/{len(TITLES)}" in err
        assert ETA.search(err), err
    else:
        assert "encode text" not in err and not ETA.search(err)
