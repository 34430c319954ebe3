"""Save and restore the continual learner: safetensors arrays + JSON metadata, no pickle.

Everything that influences later learning is kept, optimizer moments and
random generator states included, so a restored learner continues exactly as
the original would have.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import threading

import numpy as np
import torch

if TYPE_CHECKING:
    from .continual import ContinualLearner

ADAM_KEYS = ("exp_avg", "exp_avg_sq")


def _adam_arrays(learner: "ContinualLearner") -> tuple[dict[str, np.ndarray], dict[str, float]]:
    arrays, steps = {}, {}
    for name, p in (("A", learner.adapter.A), ("B", learner.adapter.B), ("head", learner.head)):
        state = learner.opt.state.get(p)
        if state:
            arrays |= {f"opt.{name}.{k}": state[k].cpu().numpy().copy() for k in ADAM_KEYS}
            steps[name] = float(state["step"])
    return arrays, steps


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def dump(learner: "ContinualLearner") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    if learner._codec_thread is not None:
        learner._codec_thread.join()  # a checkpoint waits for a codebook in training
    a = learner.adapter
    arrays = {
        "adapter.frozen": _np(a.frozen), "adapter.A": _np(a.A), "adapter.B": _np(a.B),
        "adapter.omega_A": _np(a.omega_A), "adapter.omega_B": _np(a.omega_B),
        "adapter.gen": a._gen.get_state().numpy().copy(), "head": _np(learner.head),
        "ema.weight": _np(learner.ema_weight), "ema.head": _np(learner.ema_head),
        "ema.mass": _np(learner.ema_mass),
        "hard.x": learner._hard_x.copy(), "hard.y": learner._hard_y.copy(), "hard.loss": learner._hard_loss.copy(),
    }
    opt_arrays, opt_steps = _adam_arrays(learner)
    arrays |= opt_arrays
    arrays |= {f"protos.{k}": v for k, v in learner.protos.state_dict().items()}
    arrays |= {f"encoder.{k}": v for k, v in learner.encoder.state_dict().items()}
    mem_arrays, mem_meta = learner.memory.state_dict()
    arrays |= {f"memory.{k}": v for k, v in mem_arrays.items()}
    if learner._codec_sample:
        arrays["codec_sample"] = np.concatenate(learner._codec_sample)
    meta = {"learner": learner.name, "dim": learner.encoder.dim, "config": asdict(learner.config),
            "classes": learner._classes, "version": learner.version, "events_learned": learner.events_learned,
            "steps": learner.steps, "plateaus": a.plateaus, "merges": a.merges, "opt_steps": opt_steps,
            "memory": mem_meta, "window": learner.window.state_dict(),
            "codec_started": learner._codec_thread is not None, "codec_due": learner._codec_due}
    return arrays, meta


def _part(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}


def load(learner: "ContinualLearner", arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    if meta.get("learner") != learner.name or meta.get("dim") != learner.encoder.dim:
        raise ValueError(f"state is for {meta.get('learner')} dim {meta.get('dim')}, "
                         f"not {learner.name} dim {learner.encoder.dim}")
    a = learner.adapter
    with torch.no_grad():
        for name in ("frozen", "A", "B", "omega_A", "omega_B"):
            getattr(a, name).copy_(torch.from_numpy(arrays[f"adapter.{name}"]))
    a._gen.set_state(torch.from_numpy(arrays["adapter.gen"].copy()))
    a.plateaus, a.merges = int(meta["plateaus"]), int(meta["merges"])
    learner.head = torch.nn.Parameter(learner._t(arrays["head"].copy()))
    learner.ema_weight = learner._t(arrays["ema.weight"].copy())
    learner.ema_head = learner._t(arrays["ema.head"].copy())
    mass = arrays.get("ema.mass", np.ones(len(arrays["ema.head"]), np.float32))  # older states: plain EMA
    learner.ema_mass = learner._t(mass.copy())
    learner._hard_x, learner._hard_y = arrays["hard.x"].copy(), arrays["hard.y"].copy()
    learner._hard_loss = arrays["hard.loss"].copy()
    learner._new_optimizer()
    for name, p in (("A", a.A), ("B", a.B), ("head", learner.head)):
        if name in meta["opt_steps"]:
            learner.opt.state[p] = {"step": torch.tensor(meta["opt_steps"][name]),
                                    **{k: learner._t(arrays[f"opt.{name}.{k}"].copy()) for k in ADAM_KEYS}}
    learner.protos.load_state_dict(_part(arrays, "protos."))
    learner.encoder.load_state_dict(_part(arrays, "encoder."))
    learner.memory.load_state_dict(_part(arrays, "memory."), meta["memory"])
    learner.window.load_state_dict(meta["window"])
    learner._classes = list(meta["classes"])
    learner._class_ids = {c: i for i, c in enumerate(learner._classes)}
    learner.version, learner.events_learned, learner.steps = (int(meta[k]) for k in ("version", "events_learned",
                                                                                        "steps"))
    # Where the codebook was in its life (collecting, trained but not yet
    # switched to, or in use) is restored too, so the switch happens at the
    # same event as it would have without the restart.
    learner._codec_sample = [arrays["codec_sample"].copy()] if "codec_sample" in arrays else []
    learner._codec_due = meta["codec_due"]
    learner._codec_thread = None
    if meta["codec_started"]:
        done = threading.Thread(target=lambda: None, daemon=True)
        done.start()
        learner._codec_thread = done
