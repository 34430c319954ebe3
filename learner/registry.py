"""Every learner by name: the one place learners are built.

The daemon (``learner.name``), the quality bench (``--learners``), the River
adapter and the contract suite build learners only through :func:`build`, and
the names they accept come from :data:`LEARNERS`. A new variant is one entry
here; product learners (``product=True``) then appear in the daemon's settings
and in the contract suite, every entry in the bench.

Imports stay lazy: the settings model reads the names without loading torch.

>>> [name for name, entry in LEARNERS.items() if entry.product][:4]
['lifelong', 'nmc', 'lifelong-no-replay', 'lifelong-no-lora']
>>> LEARNERS["er"].product, LEARNERS["lifelong-mlp"].features_only
(False, True)
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from .encoders import Encoder


@dataclass(frozen=True)
class LearnerOptions:
    """What a factory may use besides the encoder; each factory reads the fields that concern it."""

    seed: int = 0
    device: str = "cpu"
    continual: Mapping[str, Any] = field(default_factory=dict)  # ContinualConfig fields (pq_m: at most)
    base_init: Mapping[str, Any] | None = None  # BaseInitConfig fields: an MLP trained first, under the learner
    fast_expert: bool = False  # mix a per-event softmax regression into predictions (RecencyMixture)
    recency: Mapping[str, Any] = field(default_factory=dict)  # RecencyConfig fields of that fast expert
    nmc: Mapping[str, Any] = field(default_factory=dict)  # NMCLearner keyword options
    classes: tuple[str, ...] = ()  # the stream's classes (a binary river baseline needs them)


Factory = Callable[[Encoder, LearnerOptions], Any]


@dataclass(frozen=True)
class Entry:
    build: Factory
    description: str
    product: bool = True  # the daemon can run it and the contract suite holds it to the Learner contract
    continual: bool = True  # a ContinualLearner inside: takes base_init and fast_expert
    served: bool = True  # predictions come from an EMA snapshot (the bench reports it as served)
    replay: bool = True  # keeps a replay memory (with a PQ codec trained beside the loop)
    features_only: bool = False  # needs feature-vector events
    snapshots: bool = True  # serves through immutable snapshots (river baselines answer row by row instead)


def _continual(**flags: Any) -> Factory:
    def make(encoder: Encoder, opts: LearnerOptions) -> Any:
        from ..memory.pq import subquantizers
        from .base_init import BaseInitConfig, BaseInitLearner, tap_width
        from .continual import ContinualConfig, ContinualLearner
        from .recency import RecencyConfig, RecencyMixture

        deep = is_mid_level(encoder)
        settings = {"seed": opts.seed, "device": opts.device, **(deep_defaults() if deep else {}),
                    **opts.continual, **flags}
        base = None if opts.base_init is None else BaseInitConfig(**{"seed": opts.seed, **opts.base_init})
        width = tap_width(encoder.dim, base) if base else encoder.dim
        # The most sub-quantisers that split the tap evenly (e.g. 80 for EfficientNet's 1280-d taps).
        settings["pq_m"] = subquantizers(width, settings.get("pq_m", ContinualConfig.pq_m))
        config = ContinualConfig(**settings)
        if deep:  # the image encoder's mid-level taps: the top is plastic below the pool
            from .deep import DeepLearner

            learner: Any = DeepLearner(encoder, config)  # type: ignore[arg-type]
        else:
            learner = BaseInitLearner(encoder, base, config) if base else ContinualLearner(encoder, config)
        return RecencyMixture(learner, RecencyConfig(**opts.recency)) if opts.fast_expert else learner
    return make


def deep_defaults() -> dict[str, Any]:
    """The continual learner's defaults under a plastic top, by measurement on fashion-mnist-split
    (3,000 of its test images; docs/benchmarks/fashion-mnist-split): fewer, smaller steps (the top's
    gradient is costly and 8 x 256 over-fits it), no importance penalty or hard buffer (with both,
    0.849 served against 0.890), and exact taps in the replay budget rather than PQ codes (codes of
    the mid-level maps with a codebook from the first events cost 8 points at 216 bytes a tap and
    11 at 96; exact: 0.892, the budget holding 9,700 of the 12,000 events)."""
    return {"steps_per_batch": 4, "replay_per_step": 128, "consolidation": False, "hard_buffer": 0, "pq_m": 0}


def is_mid_level(encoder: Encoder) -> bool:
    return getattr(encoder, "name", "") == "efficientnet-lite0-mid"


def _deep(factory: Factory) -> Factory:
    """``factory`` on the image encoder's mid-level taps (plasticity below the tap)."""
    def make(encoder: Encoder, opts: LearnerOptions) -> Any:
        from .image_encoder import ImageEncoder
        from .plastic_top import MidImageEncoder

        if not is_mid_level(encoder):
            if not isinstance(encoder, ImageEncoder):
                raise ValueError("plasticity below the tap needs the image encoder (efficientnet-lite0)")
            encoder = MidImageEncoder.like(encoder)
        return factory(encoder, opts)
    return make


def _pooled(factory: Factory) -> Factory:
    """``factory`` on the image encoder's pooled taps (the linear top: plastic_top off)."""
    def make(encoder: Encoder, opts: LearnerOptions) -> Any:
        return factory(encoder.pooled() if is_mid_level(encoder) else encoder, opts)  # type: ignore[attr-defined]
    return make


def _with(factory: Factory, *, mlp: bool | None = None, fast: bool | None = None) -> Factory:
    """``factory`` with the MLP base-initialisation and/or the fast expert forced on or off (None: as asked)."""
    def make(encoder: Encoder, opts: LearnerOptions) -> Any:
        base = opts.base_init if mlp is None else (opts.base_init or {}) if mlp else None
        return factory(encoder, replace(opts, base_init=base, fast_expert=opts.fast_expert if fast is None else fast))
    return make


def _nmc(encoder: Encoder, opts: LearnerOptions) -> Any:
    from .nmc import NMCLearner

    return NMCLearner(encoder, **opts.nmc)


def _river(kind: str) -> Factory:
    def make(encoder: Encoder, opts: LearnerOptions) -> Any:
        from river import forest, linear_model, multiclass, preprocessing

        from .river_models import RiverLearner

        if kind == "arf":
            return RiverLearner("river-arf", forest.ARFClassifier(seed=opts.seed))
        classes = sorted(opts.classes)
        if len(classes) == 2:
            return RiverLearner("river-logreg", preprocessing.StandardScaler() | linear_model.LogisticRegression(),
                                labels=(classes[0], classes[1]))
        return RiverLearner("river-logreg", preprocessing.StandardScaler()
                            | multiclass.OneVsRestClassifier(linear_model.LogisticRegression()))
    return make


_BASELINE = {"product": False, "continual": False, "served": False, "replay": False, "snapshots": False}

LEARNERS: dict[str, Entry] = {
    "lifelong": Entry(_continual(), "Online-LoRA adapter + cosine head + PQ replay + EMA serving"),
    "nmc": Entry(_nmc, "class prototypes + a linear head (the baseline)", continual=False, served=False,
                 replay=False),
    "lifelong-no-replay": Entry(_continual(replay=False), "lifelong without replay", replay=False),
    "lifelong-no-lora": Entry(_continual(lora=False), "lifelong without the LoRA adapter"),
    "lifelong-no-ema": Entry(_continual(ema=False), "lifelong serving its live weights", served=False),
    "lifelong-fixed-ema": Entry(_continual(ema_adaptive=False), "lifelong serving an EMA of fixed decay",
                                product=False),
    "lifelong-no-consolidation": Entry(_continual(consolidation=False), "lifelong without consolidation"),
    "lifelong-no-release": Entry(_continual(release_importance=False), "lifelong that keeps consolidated importance "
                                 "at a loss peak without a new class", product=False),
    "lifelong-mlp": Entry(_with(_continual(), mlp=True, fast=True), "lifelong on a base-initialised MLP encoder, "
                          "with the fast expert", features_only=True),
    "lifelong-mlp-no-fast": Entry(_with(_continual(), mlp=True, fast=False), "lifelong on a base-initialised MLP "
                                  "encoder", features_only=True),
    "lifelong-standardize": Entry(_with(_continual(), mlp=False), "lifelong on standardised features alone "
                                  "(no MLP encoder)", product=False, features_only=True),
    "lifelong-deep": Entry(_deep(_continual()), "lifelong with its top plastic below the tap: the image "
                           "encoder's last block and head conv through LoRA, replay of mid-level maps",
                           product=False),
    "lifelong-pooled": Entry(_pooled(_continual()), "lifelong on images with the linear top on the pooled "
                             "embedding (plastic_top off)", product=False),
    "lifelong-fast": Entry(_with(_continual(), fast=True), "lifelong with the fast expert"),
    "finetune": Entry(_continual(replay=False, consolidation=False, ema=False), "plain fine-tuning (lower bound)",
                      product=False, served=False, replay=False),
    "er": Entry(_continual(pq_m=0, lora=False, consolidation=False, ema=False), "experience replay of raw taps",
                product=False, served=False),
    "river-logreg": Entry(_river("logreg"), "river's StandardScaler | LogisticRegression", **_BASELINE),
    "river-arf": Entry(_river("arf"), "river's adaptive random forest", **_BASELINE),
}

PRODUCT = tuple(name for name, entry in LEARNERS.items() if entry.product)


def build(name: str, encoder: Encoder, options: LearnerOptions = LearnerOptions()) -> Any:
    """The learner ``name`` on ``encoder``."""
    try:
        entry = LEARNERS[name]
    except KeyError:
        raise ValueError(f"unknown learner {name!r}; known: {', '.join(LEARNERS)}") from None
    return entry.build(encoder, options)
