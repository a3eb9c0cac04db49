"""Screenshots of the MLflow UI on real runs, for the README (docs/img/).

Needs Debian's Chromium (`apt-get install chromium`) and Playwright's Python client without its own
browser download (`pip install playwright` in any environment); nothing here is a test dependency.

    python train.py experiment=ablate_rank seed=1,2 data.max_train=128 data.max_val=64 data.max_eval=96 \
        trainer.epochs=2 trainer.max_length=256 mlflow.tracking_uri=sqlite:////tmp/ui_demo/mlflow.db
    .venv/bin/mlflow ui --backend-store-uri sqlite:////tmp/ui_demo/mlflow.db --port 5055 --workers 1 &
    python docs/ui_screenshots.py --ui http://127.0.0.1:5055 --experiment 1 --parent <the sweep's run id>
    python docs/ui_screenshots.py --experiment <id> --parent <a study's parent> --name search_loreft --stem mlflow_search

It opens the experiment's runs table in the model-training view (the link reftlab prints), closes
the assistant panel, expands the sweep's parent row to show its jobs, then opens the parent's
report artifact.
"""

from __future__ import annotations

import argparse
from pathlib import Path

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]  # fmt: skip
VIEW = "workflowType=machine_learning"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ui", default="http://127.0.0.1:5055")
    parser.add_argument("--experiment", required=True, help="experiment id")
    parser.add_argument("--parent", required=True, help="the sweep's parent run id")
    parser.add_argument("--name", default="ablate_rank", help="the parent run's name (shown in the table)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "img"))
    parser.add_argument(
        "--stem", default="mlflow_sweep", help="file names: <stem>_runs.png, <stem>_report.png"
    )
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1500, "height": 820})
        page.goto(f"{args.ui}/#/experiments/{args.experiment}/runs?{VIEW}")
        page.wait_for_timeout(5000)
        close = page.get_by_role("button", name="Close")  # the MLflow Assistant side panel
        if close.count():
            close.first.click()
        page.get_by_text(args.name).first.wait_for(timeout=10000)
        page.locator("button[data-component-id*='runnamecellrenderer']").first.click()  # expand the parent
        page.wait_for_timeout(2000)
        page.screenshot(path=str(out / f"{args.stem}_runs.png"))
        page.goto(
            f"{args.ui}/#/experiments/{args.experiment}/runs/{args.parent}/artifacts/report/report.html?{VIEW}"
        )
        page.wait_for_timeout(6000)
        page.screenshot(path=str(out / f"{args.stem}_report.png"))
        browser.close()
    print(f"wrote {out / (args.stem + '_runs.png')} and {out / (args.stem + '_report.png')}")


if __name__ == "__main__":
    main()
