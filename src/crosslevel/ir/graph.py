"""The IR: tensors, nodes and graphs that every level reads and writes.

One representation serves float and int8 models from TFLite, ONNX and PyTorch. A graph
carries its data layout (``NCHW`` from ONNX/PyTorch, ``NHWC`` from TFLite) because the
layout decides how spatial operators read their inputs and weights; ``ir.ops`` documents
the conventions per operator. ``Graph.nodes`` is the execution order and must be
topological: the memory level reorders it, every other level keeps it.
"""

from __future__ import annotations

import copy
import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crosslevel.errors import InvalidModelError

DTYPE_BYTES: dict[str, int] = {
    "float32": 4,
    "float16": 2,
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "int32": 4,
    "int64": 8,
    "bool": 1,
}

LAYOUTS = ("NCHW", "NHWC")


@dataclass
class QuantParams:
    """Affine quantization: real = scale * (q - zero_point), per tensor or along ``axis``."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None

    def __post_init__(self) -> None:
        self.scale = np.atleast_1d(np.asarray(self.scale, dtype=np.float32))
        self.zero_point = np.atleast_1d(np.asarray(self.zero_point, dtype=np.int64))
        if self.scale.shape != self.zero_point.shape:
            raise InvalidModelError(
                f"quantization has {self.scale.size} scales but {self.zero_point.size} zero points"
            )
        if not np.all(np.isfinite(self.scale)) or np.any(self.scale <= 0):
            raise InvalidModelError("quantization scale must be finite and positive")

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1


@dataclass
class Tensor:
    """A value in the graph: an activation (``data is None``) or a constant (weights)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    data: np.ndarray | None = None
    quant: QuantParams | None = None
    is_variable: bool = False  # TFLite state tensor: lives in the persistent arena tail

    def __post_init__(self) -> None:
        self.shape = tuple(int(d) for d in self.shape)
        if self.dtype not in DTYPE_BYTES:
            raise InvalidModelError(f"tensor {self.name!r} has unsupported dtype {self.dtype}")
        if any(d < 0 for d in self.shape):
            raise InvalidModelError(f"tensor {self.name!r} has a negative dimension {self.shape}")

    @property
    def is_constant(self) -> bool:
        return self.data is not None

    @property
    def num_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.num_elements * DTYPE_BYTES[self.dtype]


@dataclass
class Node:
    """One operator application. ``""`` in ``inputs`` marks an omitted optional input."""

    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Graph:
    """A dataflow graph of nodes over named tensors, with its layout and I/O."""

    name: str
    tensors: dict[str, Tensor]
    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]
    layout: str = "NCHW"
    metadata: dict[str, Any] = field(default_factory=dict)

    # ----- lookups -------------------------------------------------------------------
    def tensor(self, name: str) -> Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise InvalidModelError(f"graph {self.name!r} has no tensor {name!r}") from None

    def producers(self) -> dict[str, Node]:
        """Map from tensor name to the node that writes it."""
        return {out: node for node in self.nodes for out in node.outputs if out}

    def consumers(self) -> dict[str, list[Node]]:
        """Map from tensor name to the nodes that read it, in execution order."""
        users: dict[str, list[Node]] = {name: [] for name in self.tensors}
        for node in self.nodes:
            for name in dict.fromkeys(i for i in node.inputs if i):
                users.setdefault(name, []).append(node)
        return users

    def activations(self) -> list[Tensor]:
        """Non-constant tensors: the ones that need RAM while the model runs."""
        return [t for t in self.tensors.values() if not t.is_constant]

    def constants(self) -> list[Tensor]:
        return [t for t in self.tensors.values() if t.is_constant]

    def copy(self) -> Graph:
        """A deep copy, so that a pass never mutates its input graph."""
        return copy.deepcopy(self)

    # ----- order and validation ------------------------------------------------------
    def topological_order(self) -> list[Node]:
        """A topological order that keeps the current order wherever it is already valid.

        Raises InvalidModelError naming the nodes on a cycle.
        """
        producer = self.producers()
        position = {id(n): i for i, n in enumerate(self.nodes)}
        preds: dict[int, set[int]] = {i: set() for i in range(len(self.nodes))}
        succs: dict[int, set[int]] = {i: set() for i in range(len(self.nodes))}
        for i, node in enumerate(self.nodes):
            for name in node.inputs:
                src = producer.get(name)
                if src is not None and src is not node:
                    preds[i].add(position[id(src)])
                    succs[position[id(src)]].add(i)
                elif src is node:
                    raise InvalidModelError(f"node {node.name!r} reads its own output {name!r}")
        ready = [i for i, p in preds.items() if not p]
        heapq.heapify(ready)
        order: list[int] = []
        remaining = {i: len(p) for i, p in preds.items()}
        while ready:
            i = heapq.heappop(ready)
            order.append(i)
            for j in succs[i]:
                remaining[j] -= 1
                if remaining[j] == 0:
                    heapq.heappush(ready, j)
        if len(order) != len(self.nodes):
            stuck = [self.nodes[i].name for i in range(len(self.nodes)) if remaining[i] > 0]
            raise InvalidModelError(f"graph has a cycle through nodes {stuck[:5]}")
        return [self.nodes[i] for i in order]

    def validate(self, check_shapes: bool = True) -> None:
        """Check the structure (and shapes of known operators); raise one clear error."""
        if self.layout not in LAYOUTS:
            raise InvalidModelError(f"unknown layout {self.layout!r}; expected one of {LAYOUTS}")
        _check_names(self)
        producer = self.producers()
        # Variable (state) tensors hold values from the previous invocation: always readable.
        available = set(self.inputs) | {
            t.name for t in self.tensors.values() if t.is_constant or t.is_variable
        }
        for node in self.nodes:
            for name in node.inputs:
                if not name:
                    continue
                if name not in self.tensors:
                    raise InvalidModelError(
                        f"node {node.name!r} ({node.op}) reads undefined tensor {name!r}"
                    )
                if name not in available and name not in producer:
                    raise InvalidModelError(
                        f"node {node.name!r} ({node.op}) reads dangling tensor {name!r}: "
                        "no node produces it and it is not a graph input or constant"
                    )
        for name in self.outputs:
            if name not in producer and name not in self.inputs:
                raise InvalidModelError(f"graph output {name!r} is not produced by any node")
        order = self.topological_order()
        if [id(n) for n in order] != [id(n) for n in self.nodes]:
            seen: set[str] = set(available)
            for node in self.nodes:
                late = [i for i in node.inputs if i and i not in seen]
                if late:
                    raise InvalidModelError(
                        f"node {node.name!r} runs before its input {late[0]!r} is produced"
                    )
                seen.update(node.outputs)
        if check_shapes:
            from crosslevel.ir.ops import check_node_shapes

            for node in self.nodes:
                check_node_shapes(self, node)


def _check_names(graph: Graph) -> None:
    for key, tensor in graph.tensors.items():
        if key != tensor.name:
            raise InvalidModelError(f"tensor registered as {key!r} is named {tensor.name!r}")
    for name in [*graph.inputs, *graph.outputs]:
        if name not in graph.tensors:
            raise InvalidModelError(f"graph input/output {name!r} is not a tensor of the graph")
    seen_nodes: set[str] = set()
    written: dict[str, str] = {}
    for node in graph.nodes:
        if node.name in seen_nodes:
            raise InvalidModelError(f"two nodes are named {node.name!r}")
        seen_nodes.add(node.name)
        for out in node.outputs:
            if not out:
                continue
            if out not in graph.tensors:
                raise InvalidModelError(f"node {node.name!r} writes undefined tensor {out!r}")
            if out in written:
                raise InvalidModelError(
                    f"tensor {out!r} is written by both {written[out]!r} and {node.name!r}"
                )
            if graph.tensors[out].is_constant:
                raise InvalidModelError(f"node {node.name!r} writes constant tensor {out!r}")
            written[out] = node.name


def unique_name(existing: Iterable[str], base: str) -> str:
    """``base`` if unused, else ``base_1``, ``base_2``, ... (for passes that add tensors)."""
    taken = set(existing)
    if base not in taken:
        return base
    k = 1
    while f"{base}_{k}" in taken:
        k += 1
    return f"{base}_{k}"
