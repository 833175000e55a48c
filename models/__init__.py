"""The ranker's model code (pure PyTorch): feature spec, config, embeddings, experts, multi-task layers, losses.

See docs/models.md. Submodules import torch; import them where used, not from the CLI's top level.
"""
