"""ONNX detector overhead: pre- and post-processing against the model's own inference.

The model is built here with the ``onnx`` package in the shape of a YOLOv8 export: a
640x640 RGB NCHW float input, a strided convolutional backbone (widths 16-256, SiLU
activations, two 3x3 convolutions per stage) with three detection heads at strides 8,
16 and 32, and the export's output ``[1, 84, 8400]`` (4 box values in input pixels then
80 class scores after a sigmoid). Weights are random (seeded), with the class heads'
biases set so that about as many anchors pass the 0.25 threshold as in a busy scene:
the numbers are for timing, not for finding anything.

* Ours: :class:`~kvs_toolkit.consumer.FrameBatcher` letterboxing a 1280x720 BGR frame
  into the input tensor (pre), and :func:`~kvs_toolkit.analysis.decode_yolo_output`
  (threshold, class-wise NMS) plus :func:`~kvs_toolkit.consumer.unletterbox_boxes` and
  the :class:`~kvs_toolkit.analysis.Detection` objects, as ``OnnxDetector`` does (post).
* Reference: ``InferenceSession.run`` on the same tensor, CPU execution provider with
  ONNX Runtime's default threads (what ``OnnxDetector`` uses).

Goal (issue 7): pre + post under 10% of the inference time.
"""

from __future__ import annotations

import importlib
import statistics
import time
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from benchmarks.common import Options, Result, gc_paused
from kvs_toolkit.analysis import Detection, decode_yolo_output
from kvs_toolkit.consumer.tensor import FrameBatcher, unletterbox_boxes
from kvs_toolkit.samples import SampleSpec, render_frame

INPUT: Final = 640
CLASSES: Final = 80
ANCHORS: Final = (INPUT // 8) ** 2 + (INPUT // 16) ** 2 + (INPUT // 32) ** 2  # 8400
GOAL_SHARE: Final = 0.10
CONVOLUTIONS: Final = 19  # 4 stem + 3 stages x 3 + 3 heads x 2
CONF_THRESHOLD: Final = 0.25
# Anchors over the threshold before NMS: a crowded scene (YOLOv8n on a street scene
# typically has a few hundred).
TARGET_CANDIDATES: Final = 300


def yolo_shaped_model(seed: int = 0, class_gain: float = 1.0, class_bias: float = 0.0) -> bytes:
    """The serialized ONNX model described in the module docs. The class heads' weights
    are multiplied by ``class_gain`` and their biases set to ``class_bias``."""
    from onnx import TensorProto, checker, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes: list[Any] = []
    initializers: list[Any] = []
    counter = [0]

    def name(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}{counter[0]}"

    def conv(
        x: str,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int,
        *,
        act: bool = True,
        bias: npt.NDArray[np.float32] | None = None,
        gain: npt.NDArray[np.float32] | None = None,
    ) -> str:
        # He initialisation keeps activations in range through the stack.
        std = np.sqrt(2.0 / (c_in * kernel * kernel))
        weight = rng.normal(0.0, std, (c_out, c_in, kernel, kernel)).astype(np.float32)
        if gain is not None:
            weight *= gain[:, None, None, None]
        w, b = name("w"), name("b")
        initializers.append(numpy_helper.from_array(weight, w))
        initializers.append(
            numpy_helper.from_array(bias if bias is not None else np.zeros(c_out, np.float32), b)
        )
        out = name("conv")
        pad = kernel // 2
        nodes.append(
            helper.make_node(
                "Conv",
                [x, w, b],
                [out],
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[pad, pad, pad, pad],
            )
        )
        if not act:
            return out
        gate, silu = name("sig"), name("silu")
        nodes.append(helper.make_node("Sigmoid", [out], [gate]))
        nodes.append(helper.make_node("Mul", [out, gate], [silu]))
        return silu

    x = conv("images", 3, 16, 3, 2)  # 320
    x = conv(x, 16, 32, 3, 2)  # 160
    x = conv(x, 32, 32, 3, 1)
    x = conv(x, 32, 32, 3, 1)
    features: list[tuple[str, int]] = []
    channels = 32
    for width in (64, 128, 256):  # 80, 40, 20: strides 8, 16, 32
        x = conv(x, channels, width, 3, 2)
        x = conv(x, width, width, 3, 1)
        x = conv(x, width, width, 3, 1)
        channels = width
        features.append((x, width))
    head_bias = np.concatenate([np.zeros(4, np.float32), np.full(CLASSES, class_bias, np.float32)])
    head_gain = np.concatenate([np.ones(4, np.float32), np.full(CLASSES, class_gain, np.float32)])
    flat_shape = name("shape")
    initializers.append(
        numpy_helper.from_array(np.array([1, 4 + CLASSES, -1], np.int64), flat_shape)
    )
    heads = []
    for feature, width in features:
        stem = conv(feature, width, width, 3, 1)
        head = conv(stem, width, 4 + CLASSES, 1, 1, act=False, bias=head_bias, gain=head_gain)
        flat = name("flat")
        nodes.append(helper.make_node("Reshape", [head, flat_shape], [flat]))
        heads.append(flat)
    raw = name("raw")
    nodes.append(helper.make_node("Concat", heads, [raw], axis=2))
    probabilities = name("prob")
    nodes.append(helper.make_node("Sigmoid", [raw], [probabilities]))
    # Boxes in input pixels: centres over the whole input, sizes up to 200 px; classes
    # stay as probabilities.
    scale = name("scale")
    factors = np.concatenate(
        [np.array([INPUT, INPUT, 200, 200], np.float32), np.ones(CLASSES, np.float32)]
    ).reshape(1, 4 + CLASSES, 1)
    initializers.append(numpy_helper.from_array(factors, scale))
    nodes.append(helper.make_node("Mul", [probabilities, scale], ["output0"]))
    graph = helper.make_graph(
        nodes,
        "yolo-shaped",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, INPUT, INPUT])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + CLASSES, ANCHORS])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def _onnxruntime() -> Any:
    # Imported by name: the optional extra ships no type information.
    return importlib.import_module("onnxruntime")


def _logit(p: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    q = np.clip(p.astype(np.float64), 1e-12, 1 - 1e-12)
    return np.asarray(np.log(q / (1 - q)))


def calibrated_model(tensor: npt.NDArray[np.float32]) -> tuple[bytes, float, float]:
    """The model with class heads scaled to unit logit spread on ``tensor`` and biased so
    that about TARGET_CANDIDATES anchors pass CONF_THRESHOLD (random weights alone give
    nearly flat scores). Returns the model, the gain and the bias."""
    onnxruntime = _onnxruntime()
    probe = onnxruntime.InferenceSession(yolo_shaped_model(), providers=["CPUExecutionProvider"])
    raw = np.asarray(probe.run(None, {probe.get_inputs()[0].name: tensor})[0])[0]
    logits = _logit(raw[4:])
    gain = 1.0 / max(float(logits.std()), 1e-6)
    best = logits.max(axis=0) * gain
    wanted = float(np.quantile(best, 1.0 - TARGET_CANDIDATES / ANCHORS))
    bias = float(_logit(np.array([CONF_THRESHOLD], np.float32))[0]) - wanted
    return yolo_shaped_model(class_gain=gain, class_bias=bias), gain, bias


def run(options: Options | None = None) -> list[Result]:
    options = options or Options()
    onnxruntime = _onnxruntime()

    spec = SampleSpec(width=1280, height=720, fps=25, seconds=2.0)
    frames = [render_frame(spec, index) for index in range(0, spec.frame_count, 5)]
    batcher = FrameBatcher(INPUT)
    model, _gain, _bias = calibrated_model(batcher([frames[0]]).tensor.copy())
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    rounds = 5 if options.quick else 20

    pre_seconds: list[float] = []
    run_seconds: list[float] = []
    post_seconds: list[float] = []
    candidates: list[int] = []
    kept: list[int] = []
    session.run(None, {input_name: batcher([frames[0]]).tensor})  # warm-up
    with gc_paused():
        for step in range(rounds):
            image = frames[step % len(frames)]
            start = time.perf_counter()
            batch = batcher([image])
            tensor = batch.tensor
            middle = time.perf_counter()
            raw = np.asarray(session.run(None, {input_name: tensor})[0])
            inferred = time.perf_counter()
            decoded = decode_yolo_output(raw[0], conf_threshold=CONF_THRESHOLD, iou_threshold=0.45)
            boxes = unletterbox_boxes(decoded.boxes, batch.params[0])
            detections = [
                Detection.from_pixels(
                    f"class_{int(c)}", float(s), (x1, y1, x2 - x1, y2 - y1), (1280, 720)
                )
                for (x1, y1, x2, y2), s, c in zip(
                    boxes, decoded.scores, decoded.class_ids, strict=True
                )
            ]
            end = time.perf_counter()
            if raw.shape != (1, 4 + CLASSES, ANCHORS):
                raise RuntimeError(f"model output {raw.shape}, not [1, 84, 8400]")
            pre_seconds.append(middle - start)
            run_seconds.append(inferred - middle)
            post_seconds.append(end - inferred)
            candidates.append(int((raw[0, 4:].max(axis=0) >= CONF_THRESHOLD).sum()))
            kept.append(len(detections))

    pre = statistics.median(pre_seconds)
    post = statistics.median(post_seconds)
    inference = statistics.median(run_seconds)
    share = (pre + post) / inference
    threads = onnxruntime.SessionOptions().intra_op_num_threads
    notes = (
        f"onnx_pipeline: a YOLOv8-shaped model built with the onnx package (640x640 input, "
        f"{CONVOLUTIONS} convolutions, SiLU, 3 heads, output [1, 84, {ANCHORS}], random seeded "
        f"weights; class heads calibrated so about {TARGET_CANDIDATES} anchors pass the "
        f"threshold), ONNX Runtime {onnxruntime.__version__} CPU provider, default threads "
        f"(intra_op_num_threads={threads}: all cores). {rounds} frames of 1280x720 BGR, "
        "medians per frame. Pre: FrameBatcher letterbox to the NCHW float tensor; post: "
        f"decode_yolo_output (threshold {CONF_THRESHOLD}, class-wise NMS at IoU 0.45) + "
        f"unletterbox_boxes + Detection objects; {statistics.median(candidates):.0f} "
        f"anchors over the threshold, {statistics.median(kept):.0f} boxes kept (median).",
    )
    return [
        Result(
            benchmark="onnx: pre + post vs inference, 640x640 YOLO-shaped model",
            ours=f"pre {pre * 1000:.2f} + post {post * 1000:.2f} ms",
            reference=f"session.run {inference * 1000:.1f} ms",
            ratio=f"{share:.1%}",
            goal=f"< {GOAL_SHARE:.0%} of inference",
            met=share < GOAL_SHARE,
            notes=notes,
        )
    ]


if __name__ == "__main__":
    for result in run(Options(quick=True)):
        print(result)
