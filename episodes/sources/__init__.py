"""Dataset sources: omniglot, lake-runs, folder, strokes (the embedded default)."""
