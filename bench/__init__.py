"""Benchmarks: quality (accuracy, forgetting, stability gap), speed, checkpoints, faults; and their streams.

Uses ``lifelong.service`` to run the daemon's own loop, and ``learner``, ``memory``,
``monitoring`` and ``stream`` below it; nothing in the daemon imports this package.
"""
