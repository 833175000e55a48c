"""Random batches that follow a :class:`~models.spec.FeatureSpec` (for tests, examples and smoke runs).

Ids are uniform within each field's range; sequences get a random number of real behaviours (newest first,
then padding with item id 0 and gap bucket 0); labels are Bernoulli with the given positive rate.
"""

from __future__ import annotations

import torch

from models.spec import FeatureSpec


def random_batch(
    spec: FeatureSpec,
    batch_size: int,
    seed: int = 0,
    positive_rate: float = 0.3,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """A batch dict with every tensor the ranker and the losses read.

    Example::

        batch = random_batch(spec, 16)
        batch["cat"].shape, batch["labels"].shape   # [16, n_cat], [16, T]
    """
    g = torch.Generator().manual_seed(seed)
    n = batch_size

    def ids(high: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(0, max(high, 1), shape, generator=g)

    batch = {
        "cat": torch.stack([ids(f.vocab_size, (n,)) for f in spec.categorical], dim=1)
        if spec.categorical
        else torch.zeros(n, 0, dtype=torch.long),
        "num": torch.stack([ids(f.n_buckets, (n,)) for f in spec.numeric], dim=1)
        if spec.numeric
        else torch.zeros(n, 0, dtype=torch.long),
        "labels": (torch.rand(n, len(spec.tasks), generator=g) < positive_rate).float(),
        "weights": torch.ones(n, len(spec.tasks)),
    }
    if spec.sequence is not None:
        seq = spec.sequence
        length = torch.randint(0, seq.length + 1, (n, 1), generator=g)
        real = torch.arange(seq.length).unsqueeze(0) < length  # newest first, padding at the end
        item_vocab = spec.categorical[spec.categorical_index(seq.item_field)].vocab_size
        batch["seq_items"] = torch.where(real, ids(item_vocab, (n, seq.length)), 0)
        batch["seq_gaps"] = torch.where(real, 1 + ids(seq.n_gap_buckets - 1, (n, seq.length)), 0)
        if seq.category_field is not None:
            cat_vocab = spec.categorical[spec.categorical_index(seq.category_field)].vocab_size
            batch["seq_cats"] = torch.where(real, ids(cat_vocab, (n, seq.length)), 0)
    return {k: v.to(device) for k, v in batch.items()} if device is not None else batch
