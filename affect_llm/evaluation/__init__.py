"""Evaluation: label metrics, plausibility judges, calibration and reports."""
