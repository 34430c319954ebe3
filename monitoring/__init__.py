"""Metrics, continual evaluation and dashboards. Reads learner step statistics; never drives learning."""
