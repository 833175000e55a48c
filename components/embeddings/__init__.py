"""Pre-trained representations of ads: text and image encoders (``text``, ``visual``) and the incremental,
content-addressed vector store they fill (``vector_store``). See docs/representations.md."""
