"""The data settings checked before anything is read or written (train.py and the data CLI alike)."""

from __future__ import annotations

from ..config import ConfigError
from . import recipes
from .versioning import safe_name


def check_data(dcfg) -> None:
    """The dataset's name, recipe, settings, source file and folds; a ConfigError naming what is wrong."""
    safe_name(dcfg.name, "data.name")
    if dcfg.recipe not in recipes.RECIPES:
        raise ConfigError(f"data.recipe={dcfg.recipe!r} is not valid: choose one of {list(recipes.RECIPES)}")
    recipes.check_settings(dcfg)  # a setting the recipe does not apply is refused, not recorded
    if dcfg.get("revision") is None:  # a stored revision needs no source file
        recipes.check_path(dcfg.path)
    folds, fold = dcfg.get("folds"), dcfg.get("fold", 0)  # integers: the schema checks the types
    if folds is not None and folds < 2:
        raise ConfigError(
            f"data.folds={folds!r} is not valid: it must be an integer >= 2 (or null: no folds)"
        )
    if not 0 <= fold < (folds or 1):
        allowed = f"0 .. {folds - 1} (data.folds={folds})" if folds else "0 unless data.folds is set"
        raise ConfigError(f"data.fold={fold!r} is not valid: choose {allowed}")
