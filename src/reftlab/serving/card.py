"""A model card (README.md) for a saved intervention or adapter, like the Hub's: what it is, what
it was trained on, how well it did, and how to load it."""

from __future__ import annotations

from pathlib import Path

# How predict.py is called (its flags are checked against predict.main's parser by the tests):
# texts from a file's column or one per line on stdin; the weights from this folder or the MLflow run.
PREDICT = (
    "```bash\n"
    "python predict.py --path <folder> --input texts.csv --column text --output predictions.csv\n"
    'echo "a text to classify" | python predict.py --run <mlflow-run-id>\n'
    "```\n"
    "`<folder>` is this folder; `<mlflow-run-id>` the run that logged it (add `--tracking-uri` for a "
    "tracking server; default `sqlite:///mlflow.db`)."
)


def model_card(cfg, metrics: dict, data_version: str, data_hash: str) -> str:
    icfg = cfg.intervention
    method = str(icfg.method)
    pct = lambda k: f"{100 * metrics[k]:.1f}%" if k in metrics else "-"  # noqa: E731
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
    results = (
        f"| split | examples | accuracy | F1 |\n|---|---|---|---|\n"
        f"| validation (settings chosen on it) | {int(metrics.get('val_examples', 0))} | {pct('val_accuracy')} | "
        f"{metrics.get('val_f1', float('nan')):.3f} |\n"
        f"| test (reported once) | {int(metrics.get('eval_examples', 0))} | {pct('accuracy')} | "
        f"{metrics.get('f1', float('nan')):.3f} |"
    )
    if method == "lora":
        load = (
            "```python\nfrom peft import PeftModel\nmodel = PeftModel.from_pretrained(base_model, folder)\n```\n"
            f"or classify texts with reftlab:\n\n{PREDICT}"
        )
    else:
        load = (
            "pyreft's own layout is `pyreft.zip` here (and `intervention_pyreft/` beside this folder in "
            "the run's outputs):\n\n```python\nimport pyreft  # after: unzip pyreft.zip -d layout\n"
            'reft_model = pyreft.ReftModel.load("layout", base_model)  # needs reftlab importable (fp32 types)\n'
            "# or: from reftlab import reft; reft_model, settings = reft.load(base_model, folder)\n```\n"
            f"Interventions apply at positions `{icfg.get('positions')}` of the prompt (pyreft's unit "
            f"locations); reftlab's predict.py does that for you:\n\n{PREDICT}"
        )
    return (
        f"# {method} on {cfg.data.name} (reftlab)\n\nA Yes/No classifier: the frozen base model with this "
        f"intervention answers the data's question; the score is logit(Yes) - logit(No).\n\n"
        f"| | |\n|---|---|\n{rows}\n\n## Results\n\n{results}\n\n## Load it\n\n{load}\n"
    )


def write(folder: Path, text: str) -> Path:
    path = Path(folder) / "README.md"
    path.write_text(text)
    return path
