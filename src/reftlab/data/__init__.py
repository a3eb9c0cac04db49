"""The data wing: datasets prepared, versioned with Oxen, and handed to a run.

- `recipes`: read a table or the persuasion corpus, label (Yes/No or k classes), clean, split
  (train/val/eval), cap, write the prepared files and their README; `Prepared`, `DataError`, `YES`/`NO`.
- `choice`: multiple-choice files (LLM-Adapters' JSON, tables with options) read into questions with
  their options (`recipes.choice_recipe` splits them); `files`: formats, paths, columns, `DataError`.
- `versioning`: one Oxen repository per dataset under data/repos/<name>: `prepare` commits a version,
  `load` gives a run the rows of one commit (`data.revision`), push/pull to a hub; `safe_name`.
- `oxen_ops`: one Oxen operation per short-lived process (`python -m reftlab.data.oxen_ops`).
- `datasets`: a run's splits logged as MLflow dataset inputs.
- `cli`: `python -m reftlab.data.cli prepare|log|push|pull [data=<name>] [data.key=value ...]` (`make data`).

Below it: tracking, locks, config/. It imports nothing here, so that the Oxen subprocess starts
without pandas: import the module you need (`from reftlab.data import recipes`).
"""
