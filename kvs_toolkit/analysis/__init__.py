"""Analysis of decoded KVS frames: detectors, result sinks and the pipeline between them.

* :mod:`~kvs_toolkit.analysis.base` - :class:`Detection`, the :class:`Detector`
  protocol, the detector registry (:func:`create_detector`, :func:`register_detector`,
  ``"module:function"`` plug-ins) and :class:`AnalysisError`.
* Detectors: :class:`MotionDetector` (OpenCV background model, no weights),
  :class:`HaarFaceDetector` (OpenCV Haar cascade), :class:`RekognitionDetector`
  (Amazon Rekognition Image per frame, rate-capped, retried, change-filtered) and
  :class:`OnnxDetector` (YOLO ONNX exports with the optional ``onnxruntime``).
* :mod:`~kvs_toolkit.analysis.processors` - Rekognition Video stream processors
  (:class:`StreamProcessors`: face search, connected home) and their Kinesis results
  joined to fragments and frames (:class:`FaceSearchResults`, :class:`FragmentIndex`).
* :mod:`~kvs_toolkit.analysis.sinks` - :class:`AnalysisRecord` and the sinks: JSON lines,
  Kinesis Data Streams, S3, webhook, memory.
* :mod:`~kvs_toolkit.analysis.pipeline` - :class:`Analyzer`, plus :func:`contact_sheet`
  and :func:`timeline_png` for pictures of a run.

Registered detector names: ``motion``, ``haar-face``, ``rekognition``, ``onnx``.
"""

from kvs_toolkit.analysis.annotate import AnnotatedPublisher
from kvs_toolkit.analysis.base import (
    AnalysisError,
    BoundingBox,
    CallableDetector,
    Detection,
    Detector,
    box_iou,
    create_detector,
    register_detector,
    registered_detectors,
)
from kvs_toolkit.analysis.draw import contact_sheet, draw_detections, label_colour, timeline_png
from kvs_toolkit.analysis.faces import HaarFaceDetector
from kvs_toolkit.analysis.motion import IouTracker, MotionDetector
from kvs_toolkit.analysis.pipeline import AnalysisStats, Analyzer
from kvs_toolkit.analysis.processors import (
    FaceSearchResults,
    FragmentIndex,
    ResultsPosition,
    StreamProcessorInfo,
    StreamProcessorNotFoundError,
    StreamProcessors,
    parse_frame_record,
)
from kvs_toolkit.analysis.rekognition import (
    CallWindow,
    ChangeFilter,
    RekognitionDetector,
    RekognitionError,
    RekognitionStats,
    TokenBucket,
    encode_image,
)
from kvs_toolkit.analysis.sinks import (
    AnalysisRecord,
    JsonLinesSink,
    KinesisSink,
    MemorySink,
    ResultSink,
    S3Sink,
    SinkError,
    WebhookSink,
    create_sink,
    register_sink,
    registered_sinks,
)
from kvs_toolkit.analysis.yolo import OnnxDetector, decode_yolo_output, nms

__all__ = [
    "AnalysisError",
    "AnalysisRecord",
    "AnalysisStats",
    "Analyzer",
    "AnnotatedPublisher",
    "BoundingBox",
    "CallWindow",
    "CallableDetector",
    "ChangeFilter",
    "Detection",
    "Detector",
    "FaceSearchResults",
    "FragmentIndex",
    "HaarFaceDetector",
    "IouTracker",
    "JsonLinesSink",
    "KinesisSink",
    "MemorySink",
    "MotionDetector",
    "OnnxDetector",
    "RekognitionDetector",
    "RekognitionError",
    "RekognitionStats",
    "ResultSink",
    "ResultsPosition",
    "S3Sink",
    "SinkError",
    "StreamProcessorInfo",
    "StreamProcessorNotFoundError",
    "StreamProcessors",
    "TokenBucket",
    "WebhookSink",
    "box_iou",
    "contact_sheet",
    "create_detector",
    "create_sink",
    "decode_yolo_output",
    "draw_detections",
    "encode_image",
    "label_colour",
    "nms",
    "parse_frame_record",
    "register_detector",
    "register_sink",
    "registered_detectors",
    "registered_sinks",
    "timeline_png",
]
