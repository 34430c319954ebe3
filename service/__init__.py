"""The daemon: configuration, the learning loop and its intake, HTTP, snapshots, checkpoints, its sub-commands.

Wires ``stream``, ``learner``, ``memory`` and ``monitoring``; never imports ``bench``
(the benchmarks use it, and ``lifelong/cli.py`` sits above both).
"""
