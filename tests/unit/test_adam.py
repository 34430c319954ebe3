"""The learners' Adam: torch.optim.Adam's steps to float rounding, its state format, no torch._dynamo."""
from __future__ import annotations

import subprocess
import sys

import torch

from lifelong.learner.adam import Adam
from lifelong.learner.adam_state import adam_state, load_adam_state


def _pair(seed: int = 0) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    g = torch.Generator().manual_seed(seed)
    a = [torch.nn.Parameter(torch.randn(5, 3, generator=g)), torch.nn.Parameter(torch.randn(7, generator=g)),
         torch.nn.Parameter(torch.randn(4, generator=g))]
    return a, [torch.nn.Parameter(p.detach().clone()) for p in a]


def _loss(ps: list[torch.nn.Parameter], x: torch.Tensor, i: int) -> torch.Tensor:
    loss = ((ps[0] @ x) ** 2).sum() + (ps[1] ** 3).sum()
    return loss + (ps[2] ** 2).sum() if i % 3 else loss  # the third parameter has no gradient every 3rd step


def _groups(ps: list[torch.nn.Parameter]) -> list[dict]:
    return [{"params": ps[:2], "lr": 0.01}, {"params": ps[2:], "lr": 0.05}]


def test_steps_match_torch_optim_adam_with_groups_and_missing_gradients() -> None:
    ours, theirs = _pair()
    o1, o2 = Adam(_groups(ours)), torch.optim.Adam(_groups(theirs), foreach=True)
    g = torch.Generator().manual_seed(1)
    for i in range(40):
        x = torch.randn(3, generator=g)
        for ps, opt in ((ours, o1), (theirs, o2)):
            opt.zero_grad()
            _loss(ps, x, i).backward()
            opt.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        assert float(o1.state[p]["step"]) == float(o2.state[q]["step"])
    assert float(o1.state[ours[2]]["step"]) == 26  # skipped where it had no gradient
    o1.zero_grad()
    assert all(p.grad is None for p in ours)


def test_a_saved_state_resumes_the_same_steps() -> None:
    ours, twin = _pair()
    opt = Adam(_groups(ours))
    x = torch.ones(3)
    for i in range(5):
        opt.zero_grad()
        _loss(ours, x, 1).backward()
        opt.step()
    names = {f"p{i}": p for i, p in enumerate(ours)}
    arrays, steps = adam_state(opt, names)
    for p, q in zip(twin, ours):
        p.data.copy_(q.data)
    resumed = Adam(_groups(twin))
    load_adam_state(resumed, {f"p{i}": p for i, p in enumerate(twin)}, arrays, steps)
    for ps, o in ((ours, opt), (twin, resumed)):
        o.zero_grad()
        _loss(ps, x, 1).backward()
        o.step()
    for p, q in zip(ours, twin):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_building_a_learner_does_not_import_torch_dynamo() -> None:
    """torch.optim's first optimiser imports torch._dynamo: seconds at start for a River pipeline."""
    code = ("import sys, numpy as np\n"
            "from lifelong.learner.encoders import FeatureEncoder\n"
            "from lifelong.learner.registry import LearnerOptions, build\n"
            "l = build('lifelong', FeatureEncoder(4), LearnerOptions())\n"
            "l.learn_many(np.random.default_rng(0).normal(size=(8, 4)), ['a', 'b'] * 4)\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
