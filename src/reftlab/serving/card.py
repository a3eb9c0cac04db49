"""A model card (README.md) for a saved intervention or adapter, like the Hub's: what it is, what
it was trained on, how well it did, and how to load it."""

from __future__ import annotations

from pathlib import Path

# How predict.py is called, per task (its flags are checked against predict.main's parser by the tests):
# texts (or questions) from a file or stdin; the weights from this folder or the MLflow run.
WHERE = (
    "`<folder>` is this folder; `<mlflow-run-id>` the run that logged it (add `--tracking-uri` for a "
    "tracking server; default `sqlite:///mlflow.db`)."
)
PREDICT = (
    "```bash\n"
    "python predict.py --path <folder> --input texts.csv --column text --output predictions.csv\n"
    'echo "a text to classify" | python predict.py --run <mlflow-run-id>\n'
    "```\n" + WHERE
)
PREDICT_CHOICE = (
    "```bash\n"
    "python predict.py --path <folder> --input questions.csv --column question --output answers.csv\n"
    'echo \'{"question": "Which gas do plants take in?", "options": ["oxygen", "carbon dioxide"]}\' '
    "| python predict.py --run <mlflow-run-id>\n"
    "```\n"
    "`questions.csv`: a `question` column and the options, an `options` column (a JSON list) or "
    "`option_1`, `option_2`, ... columns; optionally `keys` (default answer1, answer2, ...) and `text` "
    "(the prompt; default LLM-Adapters' instruction listing the options with their keys). " + WHERE
)


def about(task) -> str:
    """What a model of `task` answers, and how its MLflow model is called."""
    name = task.names[0]
    if name == "classify":
        labels = ", ".join(f"`{lab}`" for lab in task.labels or []) or "the data's labels"
        what = (f"A classifier over the labels {labels}: the frozen base model with this intervention answers "
                "the data's question with one of them; a label's score is the log-likelihood of its whole "
                "answer, its probability the softmax over the labels.")  # fmt: skip
    elif name == "choice":
        keys = ", ".join(f"`{k}`" for k in task.keys or []) or "answer1, answer2, ..."
        what = ("A multiple-choice model: asked a question with its options, the frozen base model with this "
                'intervention answers "the correct answer is <key>" (trained on the keys '
                f"{keys}); the chosen option is the key with the highest log-likelihood, each option's "
                "probability the softmax over the question's keys.")  # fmt: skip
    elif name == "generate":
        extractor = task.saved().get("extractor") or task.saved().get("data_extractor") or "its extractor"
        what = ("A model that writes its answer: the frozen base model with this intervention on the prompt "
                "(never on a generated token) generates a solution, greedy, and the answer is read from it "
                f"by `{extractor}`.")  # fmt: skip
    else:
        what = ("A Yes/No classifier: the frozen base model with this intervention answers the data's "
                "question; the score is logit(Yes) - logit(No).")  # fmt: skip
    given = ", ".join(
        f"`{n}`" + ("" if required else " (optional)") for n, _, required in task.served_inputs()
    )
    answered = ", ".join(f"`{n}`" for n, _ in task.served_outputs())
    return f"{what}\n\nTask `{name}`; the run's MLflow model takes {given} and answers {answered}."


def model_card(cfg, metrics: dict, data_version: str, data_hash: str, task: dict | None = None) -> str:
    """The card of a run of `cfg` with these results; `task`: what the saved model keeps of its task
    (`Task.saved`; default: the config's task)."""
    from .. import tasks

    task = tasks.get(task if task is not None else cfg.get("task"))
    icfg = cfg.intervention
    method = str(icfg.method)
    where = {
        "base model": f"`{cfg.model.name}` ({cfg.model.get('path') or cfg.model.get('source') or 'bundled'})",
        "method": method,
        "layer": icfg.get("layer"),
        "component": icfg.get("component"),
        "positions": icfg.get("positions"),
        "rank": icfg.get("rank"),
        "trainable parameters": f"{int(metrics.get('trainable_params', 0)):,} ({metrics.get('trainable_percent', 0):.4f}% of the model)",
        "data": f"`{cfg.data.name}`, Oxen commit `{data_version}`, content hash `{data_hash}`",
        "data license": cfg.data.get("license") or "not given",
        "prompt": f"chat template, system prompt {cfg.data.system_prompt!r}, up to {cfg.trainer.max_length} tokens",
        "training": f"{cfg.trainer.epochs} epochs, lr {cfg.trainer.lr}, batch {cfg.trainer.batch_size}, seed {cfg.seed}",
    }
    rows = "\n".join(f"| {k} | {v} |" for k, v in where.items() if v is not None)
    results = results_table(metrics, task)
    predict = PREDICT_CHOICE if task.names[0] == "choice" else PREDICT
    if method == "lora":
        load = (
            "```python\nfrom peft import PeftModel\nmodel = PeftModel.from_pretrained(base_model, folder)\n```\n"
            f"or answer with reftlab:\n\n{predict}"
        )
    else:
        load = (
            "pyreft's own layout is `pyreft.zip` here (and `intervention_pyreft/` beside this folder in "
            "the run's outputs):\n\n```python\nimport pyreft  # after: unzip pyreft.zip -d layout\n"
            'reft_model = pyreft.ReftModel.load("layout", base_model)  # needs reftlab importable (fp32 types)\n'
            "# or: from reftlab import reft; reft_model, settings = reft.load(base_model, folder)\n```\n"
            f"Interventions apply at positions `{icfg.get('positions')}` of the prompt (pyreft's unit "
            f"locations); reftlab's predict.py does that for you:\n\n{predict}"
        )
    return (
        f"# {method} on {cfg.data.name} (reftlab)\n\n{about(task)}\n\n"
        f"| | |\n|---|---|\n{rows}\n\n## Results\n\n{results}\n\n## Load it\n\n{load}\n"
    )


def results_table(metrics: dict, task) -> str:
    """Validation and test results: accuracy and F1 (a label task), or the paper's accuracy and the
    evaluation harness's acc and acc_norm (multiple choice)."""
    pct = lambda k: f"{100 * metrics[k]:.1f}%" if k in metrics else "-"  # noqa: E731
    num = lambda k: f"{metrics[k]:.3f}" if k in metrics else "-"  # noqa: E731
    if task.names[0] == "choice":
        head, cells, names = (
            ["accuracy (keyword)", "acc (harness)", "acc_norm", "accuracy (generated)"],
            [pct] * 4,
            ["accuracy", "acc", "acc_norm", "gen_accuracy"],
        )
    elif task.names[0] == "generate":
        head, cells, names = (
            ["accuracy (exact match)", "no answer"],
            [pct, pct],
            ["accuracy", "no_answer_rate"],
        )
    else:
        head, cells, names = ["accuracy", task.f1_name], [pct, num], ["accuracy", "f1"]
    rows = [f"| split | examples | {' | '.join(head)} |", "|---" * (len(head) + 2) + "|"]
    for split, prefix, count in (("validation (settings chosen on it)", "val_", "val_examples"),
                                 ("test (reported once)", "", "eval_examples")):  # fmt: skip
        shown = [cell(prefix + name) for cell, name in zip(cells, names, strict=True)]
        rows.append(f"| {split} | {int(metrics.get(count, 0))} | {' | '.join(shown)} |")
    return "\n".join(rows)


def write(folder: Path, text: str) -> Path:
    path = Path(folder) / "README.md"
    path.write_text(text)
    return path
