"""Helpers shared by two or more scripts, one module per concern.

cli        one-line errors (UserError), device choice, seeding, thread count
video      threaded reading of any OpenCV source, atomic video writing, letterbox resize
detectors  ONE detector interface (frames in, boxes/scores/labels out) and its implementations
draw       boxes and labels on frames
timing     per-stage timing with median/p95
metrics    box IoU
mot        MOTChallenge gt/det readers
"""
