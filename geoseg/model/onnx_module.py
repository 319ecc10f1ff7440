"""An ONNX graph run by onnxruntime, wrapped as the torch module of a :class:`SegmentationModel`.

geoseg's :class:`~geoseg.engine.inference.Predictor` takes the softmax of its module's output,
averages test-time augmentations and hands probabilities to the stitcher. An ONNX model returns
probabilities already, so :class:`OnnxModule` returns their logarithm: logits whose softmax is
exactly those probabilities. Blending, TTA, resume and the dask engine then work unchanged.

How outputs are read, the same rules as Deepness's where it has them:

- Only the graph's **first output** is used; further outputs (Deepness's multi-output models)
  are ignored, and the card's classes are those of the first.
- An output of **one channel**, ``(N, 1, H, W)`` or ``(N, H, W)``, is a sigmoid ``s`` of one class:
  it becomes two classes, background with ``p = 1 - s`` and the class with ``p = s``.
- Outputs are taken as probabilities in [0, 1] (Deepness thresholds them as such); values outside
  are clipped. Channels that do not sum to one (independent sigmoids) are divided by their sum,
  which keeps the most probable class.
- An output **smaller than its input** is either the input's size divided by a whole number
  (upsampled bilinearly) or its centre (a network of unpadded convolutions: the missing border is
  filled with the edge's values, which tile overlap then blends away).
- A graph with a **fixed input size** gets every tile padded to that size (with 0, the normalised
  mean, as geoseg pads nodata) and its output cropped back; a **fixed batch size** is run that many
  tiles at a time.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geoseg.errors import GeosegWarning, ModelError, warn
from geoseg.model.onnx import OnnxSignature, new_session

#: Probabilities are clipped to at least this before the logarithm, so that no logit is -inf.
MIN_PROBABILITY = 1e-30
_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


class OnnxModule(torch.nn.Module):
    """Runs an ONNX segmentation graph on ``(N, C, H, W)`` tiles; returns log-probabilities.

    Sessions are created on first use for the device of the input (the CUDA provider for CUDA
    tensors, where onnxruntime has it) with as many threads as torch uses, so that the thread
    count a dask worker pins applies. Pickling keeps the graph and drops the sessions.
    """

    #: What runs the model, for the run's device line (``Predictor.description``).
    runtime = "onnxruntime"

    def __init__(
        self, model_bytes: bytes, signature: OnnxSignature, *, num_classes: int, source: str
    ) -> None:
        super().__init__()
        if signature.input_type not in _NUMPY_TYPES:
            raise ModelError(
                f"{source} takes {signature.input_type} inputs; geoseg feeds float tiles"
            )
        self.model_bytes = model_bytes
        self.signature = signature
        self.num_classes = num_classes
        self.source = source
        self._sessions: dict[tuple[str, int], Any] = {}
        digest = hashlib.sha256(model_bytes).digest()
        # the digest identifies the graph in state_dict(), as weights do for a torch network
        # (the resume journal's model fingerprint)
        self.register_buffer("onnx_sha256", torch.tensor(list(digest), dtype=torch.uint8))

    def extra_repr(self) -> str:
        """The file and the class count, for ``repr``."""
        return f"{self.source}, {self.num_classes} classes"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_sessions"] = {}  # onnxruntime sessions do not pickle; made again on first use
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``(N, K, H, W)`` float32 for normalised tiles ``x`` (N, C, H, W)."""
        n, _, height, width = x.shape
        data = x.detach().to("cpu", torch.float32).contiguous().numpy()
        data = data.astype(_NUMPY_TYPES[self.signature.input_type], copy=False)
        fixed = self.signature.fixed_size
        if fixed is not None:
            if height > fixed[0] or width > fixed[1]:
                raise ModelError(
                    f"{self.source} takes tiles of {fixed[0]}x{fixed[1]} px, not "
                    f"{height}x{width}; leave --tile-size unset"
                )
            data = np.pad(data, ((0, 0), (0, 0), (0, fixed[0] - height), (0, fixed[1] - width)))
        out = self._run(self._session(x.device), data)
        probs = to_probabilities(out, data.shape[-2:], self.num_classes)
        probs = probs[:, :, :height, :width]
        logits = torch.from_numpy(np.ascontiguousarray(probs)).clamp_(min=MIN_PROBABILITY).log_()
        return logits.to(x.device)

    def _run(self, session: Any, data: np.ndarray) -> np.ndarray:
        """The first output for ``data`` (N, C, H, W), run as many tiles at a time as it takes."""
        n = len(data)
        step = self.signature.batch or n
        outputs = []
        for start in range(0, n, step):
            chunk = data[start : start + step]
            short = step - len(chunk)
            if short:  # a fixed batch size: fill the last chunk up
                chunk = np.concatenate([chunk, np.zeros((short, *chunk.shape[1:]), chunk.dtype)])
            feed = {self.signature.input_name: np.ascontiguousarray(chunk)}
            try:
                out = session.run([self.signature.output_name], feed)[0]
            except Exception as exc:  # onnxruntime raises its own types
                if len(chunk) > 1 and self.signature.batch is None:
                    # some graphs declare any batch but take one tile only: run them tile by tile
                    self.signature = dataclasses.replace(self.signature, batch=1)
                    return self._run(session, data)
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                raise ModelError(
                    f"onnxruntime cannot run {self.source} on {len(chunk)} tile(s) of "
                    f"{chunk.shape[2]}x{chunk.shape[3]} px: {reason[:300]}"
                ) from exc
            outputs.append(np.asarray(out)[: len(chunk) - short])
        return np.concatenate(outputs)

    def _session(self, device: torch.device) -> Any:
        threads = torch.get_num_threads()
        key = (str(device), threads)
        if key not in self._sessions:
            session = new_session(self.model_bytes, device=str(device), threads=threads)
            if device.type == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
                warn(
                    "onnxruntime has no CUDA provider here (install onnxruntime-gpu); "
                    f"{self.source} runs on the CPU",
                    GeosegWarning,
                    stacklevel=2,
                )
            self._sessions[key] = session
        return self._sessions[key]


def to_probabilities(out: np.ndarray, size: tuple[int, int], num_classes: int) -> np.ndarray:
    """Class probabilities ``(N, K, H, W)`` float32 from a graph output, at the input ``size``.

    ``out`` is ``(N, K', H', W')`` or ``(N, H', W')``; see the module docstring for the rules.
    """
    if out.ndim == 3:
        out = out[:, None]
    if out.ndim != 4:
        raise ModelError(
            f"the ONNX model's output has shape {out.shape}; geoseg reads (N, K, H, W) or (N, H, W)"
        )
    probs = np.clip(out.astype(np.float32, copy=False), 0.0, 1.0)
    if probs.shape[1] == 1 and num_classes == 2:
        probs = np.concatenate([1.0 - probs, probs], axis=1)
    if probs.shape[1] != num_classes:
        raise ModelError(
            f"the ONNX model outputs {out.shape[1]} channels but its card has {num_classes} "
            "classes; fix its class_names metadata"
        )
    probs /= np.maximum(probs.sum(axis=1, keepdims=True), np.float32(MIN_PROBABILITY))
    return _to_size(probs, size)


def _to_size(probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    out_h, out_w = probs.shape[-2:]
    if (out_h, out_w) == (height, width):
        return probs
    if out_h > height or out_w > width:
        raise ModelError(
            f"the ONNX model's output ({out_h}x{out_w} px) is larger than its input "
            f"({height}x{width} px); geoseg reads outputs of the input's size or smaller"
        )
    if height % out_h == 0 and width % out_w == 0 and height // out_h == width // out_w:
        scaled = F.interpolate(
            torch.from_numpy(probs), size=(height, width), mode="bilinear", align_corners=False
        )
        return scaled.numpy()
    top, left = (height - out_h) // 2, (width - out_w) // 2
    pad = ((0, 0), (0, 0), (top, height - out_h - top), (left, width - out_w - left))
    return np.pad(probs, pad, mode="edge")
