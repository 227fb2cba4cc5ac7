# onnxruntime must be loaded before usearch: in this environment (usearch 2.26.6,
# onnxruntime 1.32) importing usearch first makes the later onnxruntime import segfault
# in libstdc++. Importing it here fixes the order for every module of the tier.
import onnxruntime  # noqa: F401
