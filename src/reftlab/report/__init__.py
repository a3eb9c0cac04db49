"""Reports: what a run and a set of runs say, for a person to read.

A paper-style report over the runs of an MLflow experiment or of one sweep (`python report.py`),
as report.md, report.html and plots; each module one job, each importing only those above it:

- `runs`: load the runs from MLflow, tidy them to one row per run, group them by every setting
  that differs (less the seed and the settings that change no result, `config.identity`), count
  a repeated run once, list diverged runs with the failed ones, and the caveats;
- `stats`: means over seeds with 95% intervals (Student t; below 3 replicates, a bootstrap over the
  test reviews), the paired comparison against the reference group (every replicate paired; Welch's
  t-test where a run has no predictions), the reference `--reference` names, chance, and the choice
  (on validation accuracy only);
- `tables`: the results table as people read it (formatted numbers, what was chosen);
- `plots`: accuracy against each varied setting, with reference lines (chance, baselines);
- `render`: the report as one list of sections, written by one Markdown and one HTML renderer;
- `cli`: `python report.py` (`main`), logging the report to MLflow;
- `summary`: the closing summary a single run prints when it ends.
"""
