"""One module per job; each exposes ``run(ctx, **params) -> Result`` and imports no click."""
