"""The report (`reftlab.report`): grouping, statistics, the choice on validation, reference lines,
plots, and one list of sections written as Markdown and HTML."""

import mlflow
import pandas as pd
import pytest
from conftest import runs, train_here

from reftlab.report import cli, render
from reftlab.report.runs import baseline_runs, load_runs, method_name


def test_one_list_of_sections_is_written_as_markdown_and_as_html():
    frame = pd.DataFrame({"layer": [8, 15], "note": ["", "**chosen** (best validation)"]})
    doc = [
        render.Section("a <title>", [render.Text(["2 runs."]), render.Text(["**Caution: few**"], "caution")], 1),
        render.Section("Results", [render.Text(["**Chosen** on validation"], "note"), render.Table(frame, frozenset({1}))]),
        render.Section("Plots", [render.Images([("accuracy_vs_layer.png", "accuracy vs layer")])]),
        render.Section("Settings", [render.Settings({"trainer.lr": 0.004})]),
    ]  # fmt: skip
    md, page = render.markdown(doc), render.html(doc)
    assert md.startswith("# a <title>\n\n2 runs.\n\n**Caution: few**\n\n## Results\n")
    assert "| **15** | **chosen** (best validation) |" in md and "| 8 |  |" in md
    assert "![accuracy vs layer](accuracy_vs_layer.png)" in md and "- `trainer.lr` = 0.004" in md
    assert "<title>a &lt;title&gt;</title>" in page and "<h1>a &lt;title&gt;</h1>" in page
    assert "<p>2 runs.</p>" in page and "<p class='note'><b>Caution: few</b></p>" in page
    assert "<p class='note'>Chosen on validation</p>" in page and "**" not in page
    assert "<tr class='chosen'><td>15</td><td>chosen (best validation)</td></tr>" in page
    assert "<img src='accuracy_vs_layer.png' alt='accuracy vs layer'>" in page
    assert "<li><code>trainer.lr</code> = 0.004</li>" in page and page.endswith("</body></html>")


def fake_run(method, accuracy, layer=None, rank=None, seed=1, params=100, seconds=10.0, status="FINISHED",
             val=None, lr=0.004, data="d1", budget=None):  # fmt: skip
    """A run logged the way run.py logs one (params, tags, metrics), with chosen numbers."""
    with mlflow.start_run() as active:
        mlflow.set_tags({"method": method, "data_hash": data, "model": "tiny"})
        mlflow.log_params({"intervention.method": method, "intervention.layer": layer, "intervention.rank": rank,
                           "trainer.lr": lr, "seed": seed, "mlflow.experiment": "x", "run_name": f"r{seed}"})  # fmt: skip
        mlflow.log_params(
            {"data.max_train": None, "trainer.max_length": 512, "trainer.epochs": 5, **(budget or {})}
        )
        if status == "FINISHED":
            tp = round(accuracy * 50)
            mlflow.log_metrics({"accuracy": accuracy, "val_accuracy": accuracy if val is None else val,
                                "f1": accuracy, "trainable_params": params, "train_seconds": seconds,
                                "peak_memory_mb": 1000.0, "trainable_percent": 0.01,
                                "tp": tp, "fn": 50 - tp, "tn": tp, "fp": 50 - tp})  # fmt: skip
        else:
            mlflow.set_tag("error", "ConfigError: boom")
            mlflow.end_run(status=status)
    return active.info.run_id


@pytest.mark.slow
def test_report_on_synthetic_runs(tmp_path, mlflow_uri):
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("cmp")
    for seed, acc in ((1, 0.70), (2, 0.74)):
        fake_run("loreft", acc, layer=15, rank=4, seed=seed, params=4612, seconds=300)
        fake_run("lora", acc - 0.02, layer="None", rank=8, seed=seed, params=460800, seconds=420)
    fake_run("loreft", 0.66, layer=8, rank=4, params=4612, seconds=300)
    fake_run("none", 0.52, params=0, seconds=0)
    fake_run("tfidf", 0.90, params=50000, seconds=2)
    failed = fake_run("loreft", 0, layer=99, rank=4, status="FAILED")
    out = tmp_path / "report"
    assert cli.main(["--experiment", "cmp", "--tracking-uri", mlflow_uri, "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    # 95% CI over 2 seeds: t(0.975, 1) * sd / sqrt(2) = 12.706 * 0.0283 / 1.414 = 25.4 points
    assert "72.0% ± 25.4" in md and "| LoReFT | 15 | 2 |" in md
    # rank is fixed per method (LoReFT 4, LoRA 8): no column, no plot; listed under each method
    assert "## LoRA settings\n\n- `intervention.rank` = 8" in md
    assert "## LoReFT settings\n\n- `intervention.rank` = 4" in md
    assert failed in md and "ConfigError: boom" in md  # failed runs are listed
    assert all(m in md for m in ("LoReFT", "LoRA", "zero-shot", "TF-IDF"))
    assert "4,612" in md and "460,800" in md and "300 s" in md  # counts as integers, seconds rounded
    html = (out / "report.html").read_text()
    assert (
        "<style>" in html and "<table>" in html and "4612.0" not in html and "0.72000" not in html
    )  # formatted
    # Only the plots of what varies within a method: the layer; and parameters and train times;
    # and the groups against the reference (the default settings), paired
    plots = sorted(p.name for p in out.glob("*.png"))
    assert plots == [
        "accuracy_vs_layer.png",
        "accuracy_vs_train_time.png",
        "accuracy_vs_trainable_params.png",
        "difference_vs_reference.png",
    ]
    table = runs(mlflow_uri, "cmp")
    summary = table[table.get("tags.kind") == "report"]
    assert len(summary) == 1
    client = mlflow.tracking.MlflowClient(mlflow_uri)
    logged = {a.path for a in client.list_artifacts(summary["run_id"].iloc[0], "report")}
    assert "report/report.html" in logged and "report/accuracy_vs_layer.png" in logged


@pytest.mark.slow
def test_report_chooses_on_validation_never_on_test(tmp_path, mlflow_uri):
    """Layer 8 is best on test, layer 15 on validation: the report must choose 15 and say so."""
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("sel")
    for seed in (1, 2, 3):
        fake_run("loreft", 0.90, layer=8, rank=4, seed=seed, val=0.70)
        fake_run("loreft", 0.80, layer=15, rank=4, seed=seed, val=0.85)
        fake_run("loreft", 0.75, layer=22, rank=4, seed=seed, val=0.80)
    result = render.write(load_runs("sel", mlflow_uri), tmp_path / "r", "sel")
    chosen = result["table"].loc[result["chosen"]["overall"]]
    assert chosen["intervention.layer"] == "15" and chosen["accuracy"] == pytest.approx(0.80)
    md = (tmp_path / "r" / "report.md").read_text()
    assert "**Chosen on the validation split**" in md and "layer=15" in md
    assert "| **15** | **3** |" in md  # the chosen row is bold, not the test-best layer 8
    assert "| 8 | 3 |" in md


@pytest.mark.slow
def test_reference_lines_from_other_experiments_only_at_the_same_budget(tmp_path, mlflow_uri):
    """LoRA and TF-IDF from another experiment are drawn beside a LoReFT ablation only where they
    saw the same data caps and prompt length (and, LoRA, trained as many epochs)."""
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("other")
    small = {"data.max_train": 512, "trainer.max_length": 256, "trainer.epochs": 2}
    fake_run("lora", 0.66, rank=8, val=0.99, budget=small)  # best on validation, but a smaller budget
    fake_run("tfidf", 0.85, val=0.99, budget=small)
    fake_run("lora", 0.81, rank=8, val=0.80)  # the same budget as the ablation
    fake_run("tfidf", 0.88, val=0.86, budget={"trainer.epochs": 1})  # TF-IDF has no epochs
    fake_run("lora", 0.77, rank=8, val=0.95, budget={"trainer.epochs": 1})  # LoRA trained less
    mlflow.set_experiment("abl")
    for layer in (3, 15):
        fake_run("loreft", 0.80, layer=layer, rank=4)
    others = baseline_runs({"d1"})
    render.write(load_runs("abl", mlflow_uri), tmp_path / "r", "abl", others)
    md = (tmp_path / "r" / "report.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("Reference lines:"))
    assert "LoRA (best by validation) 81.0%" in line and "TF-IDF 88.0%" in line
    assert "66.0%" not in line and "85.0%" not in line and "77.0%" not in line


@pytest.mark.slow
def test_report_groups_every_differing_setting_and_counts_duplicates_once(tmp_path, mlflow_uri):
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("grp")
    fake_run("loreft", 0.60, layer=15, rank=4, seed=1, lr=0.004)
    fake_run("loreft", 0.90, layer=15, rank=4, seed=1, lr=0.02)  # another learning rate: not a seed
    fake_run("loreft", 0.70, layer=15, rank=4, seed=1, lr=0.004, data="d2")  # other data: not a seed
    fake_run("loreft", 0.64, layer=15, rank=4, seed=2, lr=0.004)
    # the same seed again: counts once (latest); its data license (logged by newer runs) splits nothing
    fake_run("loreft", 0.66, layer=15, rank=4, seed=2, lr=0.004, budget={"data.license": "CC BY-NC-SA 3.0"})
    result = render.write(load_runs("grp", mlflow_uri), tmp_path / "r", "grp")
    assert result["keys"] == ["trainer.lr", "data"]
    table = result["table"].set_index(["trainer.lr", "data"])
    assert table.loc[("0.004", "d1"), "seeds"] == 2
    assert table.loc[("0.004", "d1"), "accuracy"] == pytest.approx((0.60 + 0.66) / 2)
    assert table.loc[("0.02", "d1"), "seeds"] == 1 and table.loc[("0.004", "d2"), "seeds"] == 1
    assert (tmp_path / "r" / "accuracy_vs_learning_rate.png").exists()
    assert not (tmp_path / "r" / "accuracy_vs_layer.png").exists()


@pytest.mark.slow
def test_reft_vs_lora_preset_is_one_command(tmp_path, mlflow_uri):
    out = train_here(  # `python train.py ...`, here: the preset's sweep runs its jobs in its own process
        "experiment=reft_vs_lora", "model=tiny_random", "model.num_layers=16", "data.max_train=16",
        "data.max_val=16", "data.max_eval=16", "trainer.max_length=64", "trainer.epochs=1",
        "trainer.lr=1e-3,4e-3", "seed=1",
        f"mlflow.tracking_uri={mlflow_uri}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    # none and tfidf do not depend on the learning rate: run once each (the seed too: test_config.py)
    assert "8 jobs: 6 finished, 0 failed, 2 skipped" in out.stderr
    table = runs(mlflow_uri, "reft_vs_lora")
    assert sorted(table["tags.method"]) == ["lora"] * 2 + ["loreft"] * 2 + ["none", "tfidf"]
    result = render.write(load_runs("reft_vs_lora", mlflow_uri), tmp_path / "r", "r")
    table = result["table"]
    chosen = result["chosen"]["per_method"]
    for method in ("loreft", "lora"):  # each method's learning rate is its best on validation
        rows = table[table["method"] == method]
        assert table.loc[chosen[method], "val_accuracy"] == rows["val_accuracy"].max()
    text = (tmp_path / "r" / "report.md").read_text()
    for method in ("loreft", "lora"):  # each method's best is marked; the overall choice as chosen
        if chosen[method] != result["chosen"]["overall"]:
            assert f"best {method_name(method)} (validation)" in text
    assert "**chosen** (best validation)" in text
    for method in ("none", "tfidf"):  # no learning rate: shown as "-", not the grid's first value
        assert table.loc[table["method"] == method, "trainer.lr"].tolist() == ["-"]


def test_the_folds_of_a_configuration_pool_as_replicates_on_their_corpus():
    from reftlab.report import runs as report_runs
    from reftlab.report.stats import summarise

    rows = []
    for rank, acc in (("1", 0.70), ("4", 0.80)):
        for seed in ("1", "2"):
            for fold in ("0", "1", "2"):
                rows.append({"run_id": f"{rank}{seed}{fold}", "status": "FINISHED", "tags.method": "loreft",
                             "params.intervention.rank": rank, "params.seed": seed, "params.data.folds": "3",
                             "params.data.fold": fold, "tags.data_hash": f"rows-of-fold-{fold}",
                             "tags.data_corpus_hash": "corpus", "metrics.accuracy": acc, "metrics.val_accuracy": acc,
                             "metrics.train_loss_last": 0.1, "metrics.trainable_params": 10})  # fmt: skip
    tidy = report_runs.tidy(pd.DataFrame(rows))
    keys = report_runs.varying(tidy)
    assert keys == ["intervention.rank"]  # neither the fold nor each fold's rows split a group
    kept = report_runs.dedupe(tidy, keys)
    assert len(kept) == 12  # seed x fold replicates, none collapsed
    table = summarise(kept, keys)
    assert table["seeds"].tolist() == [6, 6] and table["accuracy"].tolist() == pytest.approx([0.70, 0.80])
    plain = report_runs.tidy(pd.DataFrame(rows).drop(columns=["params.data.folds"]))
    assert "data" in report_runs.varying(plain)  # without folds, other rows are other data


def test_the_paired_test_calls_a_planted_difference_significant_and_an_identical_pair_not():
    import numpy as np

    from reftlab.report.stats import holm, paired_bootstrap

    rng = np.random.default_rng(0)
    base = [rng.random(320) < 0.80 for _ in range(3)]  # 3 replicates, 320 test reviews each
    better = [b | (rng.random(320) < 0.25) for b in base]  # right wherever base is, and on ~5 points more
    diff, low, high, p = paired_bootstrap(list(zip(better, base, strict=True)))
    assert 0.03 < diff < 0.08 and 0 < low < diff < high and p < 0.01
    same = paired_bootstrap(list(zip(base, base, strict=True)))
    assert same == (0.0, 0.0, 0.0, 1.0)
    noise = [rng.random(320) < 0.80 for _ in range(3)]  # another run as good: no difference to find
    assert paired_bootstrap(list(zip(noise, base, strict=True)))[3] > 0.05
    assert holm([0.01, 0.04, float("nan"), 0.03]) == pytest.approx(
        [0.03, 0.06, float("nan"), 0.06], nan_ok=True
    )


def test_groups_pair_with_the_reference_by_seed_and_fold_on_the_same_reviews(tmp_path):
    import numpy as np

    from reftlab.report.plots import differences
    from reftlab.report.tables import against_reference

    texts = [f"review {i}" for i in range(200)]
    rng = np.random.default_rng(1)
    truth = {}

    def runs_of(name, accuracy):
        rows = []
        for seed in ("1", "2"):
            for fold in ("0", "1"):
                run_id = f"{name}-{seed}-{fold}"
                truth[run_id] = pd.Series((rng.random(200) < accuracy).astype(int), index=texts)
                rows.append({"run_id": run_id, "seed": seed, "fold": fold, "accuracy": truth[run_id].mean()})
        return pd.DataFrame(rows)

    table = pd.DataFrame({"_runs": [runs_of("ref", 0.70), runs_of("good", 0.90), runs_of("twin", 0.70)]})
    found = against_reference(table, 0, correct=truth.get)
    good, twin = found[1], found[2]
    assert good[4] == twin[4] == "paired"
    assert 0.15 < good[0] < 0.25 and good[1] > 0 and good[3] < 0.05  # significant after Holm
    assert twin[1] < 0 < twin[2] and twin[3] > 0.05
    no_predictions = against_reference(table, 0, correct=lambda run_id: None)
    assert no_predictions[1][4] == "welch" and np.isnan(no_predictions[1][1])
    # the plot reads the same: the planted difference filled and right of 0, the twin open across 0
    table["intervention.rank"] = [4, 16, 32]
    drawn = differences(table, ["intervention.rank"], found, 0, tmp_path / "d.png")
    assert [d[0] for d in drawn] == ["rank=16", "rank=32"] and (tmp_path / "d.png").stat().st_size > 5000
    assert drawn[0][4] and drawn[0][2] > 0 and not drawn[1][4] and drawn[1][2] < 0 < drawn[1][3]
    assert drawn[0][1] == pytest.approx(100 * good[0])


def test_whole_number_settings_are_ticked_as_the_integers_run_even_on_a_log_axis():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reftlab.report.plots import integer_ticks

    fig, ax = plt.subplots()
    ax.plot([1, 4, 16, 32], [0.8, 0.82, 0.85, 0.84])
    ax.set_xscale("log")
    integer_ticks(ax, [32.0, 1.0, 16.0, 4.0])
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "4", "16", "32"]
    assert len(ax.xaxis.get_minorticklocs()) == 0
    ax2 = plt.subplots()[1]
    integer_ticks(ax2, [0.001, 0.004])  # a learning rate keeps matplotlib's own ticks
    assert [t.get_text() for t in ax2.get_xticklabels()] != ["0", "0"]
    plt.close("all")
