"""Online learners: encoders, heads, adapters, drift signal, baselines.

Uses ``lifelong.memory``; never imports ``stream``, ``monitoring`` or ``service``:
a learner returns :class:`~lifelong.learner.base.StepStats` that others record.
"""
