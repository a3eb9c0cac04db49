"""Compose the Hydra config that `python train.py <overrides>` would run (for the CLIs and tools)."""

from __future__ import annotations

from pathlib import Path


def conf_dir() -> Path:
    """conf/ of the working directory when it has one, else the project's own."""
    here = Path("conf")
    return (
        here if (here / "train.yaml").exists() else Path(__file__).resolve().parents[3] / "conf"
    ).resolve()


def compose(overrides: list[str], return_hydra_config: bool = False):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from . import schema  # noqa: F401  (the typed settings the YAMLs name)

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(
            config_name="train", overrides=list(overrides), return_hydra_config=return_hydra_config
        )
