"""The data settings checked before anything is read or written (train.py and the data CLI alike)."""

from __future__ import annotations

from ..config import ConfigError
from . import recipes
from .versioning import safe_name

MULTIPLE_CHOICE = ("arc_easy", "arc_challenge", "openbookqa", "boolq")  # the shipped choice data configs


def check_data(dcfg, task: str | None = None) -> None:
    """The dataset's name, recipe, settings, source files and folds, and with `task` (a task's name) whether
    the data can feed that task; a ConfigError naming what is wrong."""
    safe_name(dcfg.name, "data.name")
    if dcfg.recipe not in recipes.RECIPES:
        raise ConfigError(f"data.recipe={dcfg.recipe!r} is not valid: choose one of {list(recipes.RECIPES)}")
    recipes.check_settings(dcfg)  # a setting the recipe does not apply is refused, not recorded
    if dcfg.get("revision") is None:  # a stored revision needs no source file
        recipes.check_path(dcfg.path)
        if dcfg.get("test_path") is not None:
            recipes.check_path(dcfg.test_path, "data.test_path")
    folds, fold = dcfg.get("folds"), dcfg.get("fold", 0)  # integers: the schema checks the types
    if folds is not None and folds < 2:
        raise ConfigError(
            f"data.folds={folds!r} is not valid: it must be an integer >= 2 (or null: no folds)"
        )
    if not 0 <= fold < (folds or 1):
        allowed = f"0 .. {folds - 1} (data.folds={folds})" if folds else "0 unless data.folds is set"
        raise ConfigError(f"data.fold={fold!r} is not valid: choose {allowed}")
    if task is not None:
        check_feeds(dcfg, task)


def check_feeds(dcfg, task: str) -> None:
    """Whether the data settings can feed `task`: multiple-choice data (data.recipe=choice) feeds
    task=choice only and task=choice needs it; word problems with solutions (data.recipe=arithmetic)
    feed task=generate only and it needs them; task=yes_no needs the labels mapped to Yes/No, so a
    table with `data.positive_label=null` (its labels kept as they are) is for task=classify."""
    choice_data = dcfg.recipe == "choice"
    if choice_data and task != "choice":
        raise ConfigError(
            f"task={task} cannot use data={dcfg.name}: it is multiple choice (data.recipe=choice, each question "
            "with its own options); run it with task=choice"
        )
    if task == "choice" and not choice_data:
        raise ConfigError(
            f"task=choice needs multiple-choice data (data.recipe=choice: data={', '.join(MULTIPLE_CHOICE)}, or "
            f"your own with options); data={dcfg.name} (data.recipe={dcfg.recipe}) has labels: use task=yes_no "
            "or task=classify"
        )
    arithmetic = dcfg.recipe == "arithmetic"
    if arithmetic != (task == "generate"):
        if arithmetic:
            raise ConfigError(f"task={task} cannot use data={dcfg.name}: its questions are answered by writing a "
                              "solution (data.recipe=arithmetic); run it with task=generate")  # fmt: skip
        raise ConfigError(f"task=generate needs data with target texts to train on (data.recipe=arithmetic: "
                          f"data=gsm8k, data=mawps, data=aqua); data={dcfg.name} (data.recipe={dcfg.recipe}) has "
                          "labels: use task=yes_no, task=classify or task=choice")  # fmt: skip
    if task == "yes_no" and dcfg.recipe == "table" and dcfg.get("positive_label", "Yes") is None:
        raise ConfigError(
            f"data.positive_label=null keeps the labels of data={dcfg.name} as they are (k classes), which "
            "task=yes_no cannot answer: run task=classify, or set data.positive_label to the value(s) that "
            "mean Yes"
        )
