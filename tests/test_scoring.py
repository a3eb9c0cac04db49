"""Scores to results: the confusion counts at the Yes/No decision."""

import numpy as np

from reftlab.tasks import yes_no


def test_metrics_confusion_matrix():
    m = yes_no.metrics(["Yes", "Yes", "No", "No"], np.array([1.0, -1.0, -2.0, 0.5]))
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (1, 1, 1, 1)
    assert m["accuracy"] == 0.5 and m["yes_rate"] == 0.5
