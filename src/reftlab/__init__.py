"""reftlab: Hydra-configured ReFT (LoReFT) vs LoRA experiments, logged to MLflow.

The house, wing by wing (a wing imports only the wings below it):

- `run`: one job's life: check, read the data, run the method, score, log (train.py calls it);
- `sweep/`: the Hydra callback around a sweep and its MLflow parent run;
- `report/`: runs loaded, grouped and compared (tables, plots, statistics), a run's closing summary;
- `serving/`: a trained intervention put to use (predict.py, the MLflow pyfunc model, the card);
- `methods/`: one plugin per method family (reft, lora, zero_shot, tfidf): what it builds and trains;
- `engine/`: the planner and the exact execution strategies (stock, cached, streamed, residual);
- `tasks/`: one plugin per task family (yes_no, classify, choice): prompts and targets, scoring,
  metrics, figures and predictions; `results` turns any task's scores into a run's results;
- `validate`, `reft`, `models`: early checks, pyreft interventions (kept at `reftlab.reft`, where
  saved pyreft folders import them), models;
- `data/`: datasets prepared by recipe, versioned with Oxen, logged as MLflow inputs;
- `tracking`, `spec`, `hf_compat`, `locks`, `config/`: MLflow and redaction, the intervention spec,
  library internals fenced, file locks, and the typed settings with a job's identity.
"""
