"""Models: open_clip factory (random init only), tiny JSON configs, checkpoints."""
