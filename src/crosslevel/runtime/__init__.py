"""Runtimes that execute a model: TensorFlow Lite Micro and ONNX Runtime."""
