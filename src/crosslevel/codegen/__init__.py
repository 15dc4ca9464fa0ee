"""Hardware-instruction level: model-specific C for a memory plan, built and verified.

Generating (graph + plan -> C sources):
  emit        ``generate_c``: checks the graph and the plan, emits each node in the plan's
              order, assembles the files; the operator -> emitter table
  op_window   CONV_2D, DEPTHWISE_CONV_2D, AVERAGE/MAX_POOL_2D (and the int8 conv kernel choice)
  op_math     FULLY_CONNECTED, MEAN, ADD, SOFTMAX
  op_copy     RESHAPE, PAD, CONCATENATION
  pieces      kernel calls cut into pieces that follow an in-place pair of the plan
  operands    reading a node's tensors, quantization and weights; C argument formatting
  context     ``EmitContext``: arena offsets, deduplicated constant arrays, stack scratch
  c_files     the text of model.h, model.c, main.c; ``c/cl_kernels.h`` holds the kernels

Building and running (C sources -> measured, verified binaries):
  build       host gcc build, ctypes executor, object sizes and vectorization remarks
  cross       Cortex-M builds run in QEMU
  tune        per-layer measured choice of the int8 convolution kernel
  command     ``crosslevel generate``
"""
