"""The runner's evaluations and report sections on small hand-made cases (no training)."""

from __future__ import annotations

from ifa_jax.runner import report


def _analysis_numbers(missing_train, missing_validation):
    return {
        "analysis": {
            "gradcam": {
                "train": {"missing_classes": missing_train},
                "validation": {"missing_classes": missing_validation},
            }
        }
    }


def test_report_names_the_classes_without_counted_samples():
    assert report.missing_classes_note(_analysis_numbers([], []), "gradcam") == []
    note = "\n".join(report.missing_classes_note(_analysis_numbers([3, 7], [3]), "gradcam"))
    assert "train split: classes 3, 7; validation split: class 3" in note
    assert "no importance row" in note and "first channels" in note
