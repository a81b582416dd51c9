"""int8 post-training quantization of float graphs (TFLite quantization spec) and its accuracy report."""

from edgec.quantize.calibration import load_calibration, random_calibration
from edgec.quantize.ptq import quantize_graph
from edgec.quantize.ranges import DEFAULT_PERCENTILE, METHODS
from edgec.quantize.report import quantization_report

__all__ = ["DEFAULT_PERCENTILE", "METHODS", "load_calibration", "quantization_report", "quantize_graph",
           "random_calibration"]
