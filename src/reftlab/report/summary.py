"""The closing summary of one run: what a person reads when it ends (the result, the time, where
everything is, what to do next)."""

from __future__ import annotations

from pathlib import Path

from .. import tasks, tracking
from ..serving.pyfunc import model_name


def closing_summary(name: str, cfg, metrics: dict, info, output_dir: Path, notes: list[str] = ()) -> str:
    """What a person reads when a run ends: the result, the time, where everything is, what next."""
    lines = [f"\n{name} finished ({cfg.intervention.method} on {cfg.data.name})"]
    lines += [f"  WARNING: {note}" for note in notes]
    if "accuracy" in metrics:
        line = f"  test accuracy {100 * metrics['accuracy']:.1f}%"
        if "f1" in metrics:
            line += f", {tasks.of(cfg).f1_name} {metrics['f1']:.3f}"
        if "acc" in metrics:  # multiple choice: as the evaluation harness scores it too
            line += f" (harness: acc {100 * metrics['acc']:.1f}%, acc_norm {100 * metrics['acc_norm']:.1f}%)"
        if "gen_accuracy" in metrics:  # multiple choice scored by generation too (the paper's)
            line += f", generated {100 * metrics['gen_accuracy']:.1f}%"
        if "no_answer_rate" in metrics:  # generated answers
            line += (f" (no answer found in {100 * metrics['no_answer_rate']:.0f}%, "
                     f"{metrics.get('mean_generated_tokens', float('nan')):.0f} tokens each on average)")  # fmt: skip
        if "chance" in metrics:
            line += f", chance {100 * metrics['chance']:.1f}%"
        line += f" on {int(metrics.get('eval_examples', 0))} examples"
        if metrics.get("val_examples"):
            line += f"; validation {100 * metrics['val_accuracy']:.1f}% on {int(metrics['val_examples'])}"
        lines.append(line + " (choose settings on validation)")
    times = [
        f"{k.split('_')[0]} {metrics[k]:.0f} s" for k in ("train_seconds", "eval_seconds") if k in metrics
    ]
    if "trainable_params" in metrics:
        percent = metrics.get("trainable_percent", float("nan"))
        share = f" ({percent:.4f}%)" if percent == percent else ""  # no share for a method without a model
        times.append(f"{int(metrics['trainable_params']):,} trainable parameters{share}")
    if metrics.get("tokens_per_second", 0) > 0:
        times.append(f"{metrics['tokens_per_second']:.0f} tokens/s generated")
    if times:
        lines.append("  " + ", ".join(times))
    lines.append(f"  outputs: {output_dir}")
    logged = not any("MLflow model" in note for note in notes)
    if (output_dir / "intervention").is_dir() and cfg.mlflow.get("log_model", True) and logged:
        lines.append(f"  MLflow model: runs:/{info.run_id}/{model_name(name)}")
    lines.append(
        f"  MLflow run {info.run_id} (experiment {cfg.mlflow.experiment}): open it with `make ui`, then"
    )
    uri = tracking.tracking_uri(cfg.mlflow.get("tracking_uri"))
    lines.append(f"  {tracking.ui_link(uri, info.experiment_id, info.run_id)}")
    # on this run's data only: an experiment may hold several (experiment=commonsense: four)
    lines.append(f"  compare runs: python report.py --experiment {cfg.mlflow.experiment} "
                 f"--filter \"tags.dataset = '{cfg.data.name}'\"")  # fmt: skip
    return "\n".join(lines)
