"""Model backends: where a hook name reads and edits on TransformerLens, nnsight and Hugging Face models."""
