"""reftlab's Hydra launcher plugin: `hydra/launcher=fused` (see reftlab.sweep.fused)."""
