"""Metrics, continual evaluation and dashboards. Reads learner step statistics; never drives learning.

May import ``lifelong.learner`` (its step statistics and protocols); never ``stream``, ``service`` or ``bench``.
"""
