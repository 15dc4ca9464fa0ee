"""What one ``generate_c`` run accumulates while it emits the nodes of a graph.

Every operator emitter needs the same things: where each activation lives in the arena
(the plan's offsets, in-place pairs and chunk buffers), a place to put constant arrays
(deduplicated by key, so a constant two nodes read is stored once in flash), and a record
of the stack scratch the invoke function must declare (the longest int32 accumulator row
and int8 im2col patch any kernel call needs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from crosslevel.errors import InvalidModelError, UnsupportedOperatorError
from crosslevel.ir.graph import Graph, Node, Tensor
from crosslevel.memory.plan import Plan

if TYPE_CHECKING:
    from crosslevel.codegen.pieces import Region

# Element types of activations (and of the generated function's inputs and outputs).
CTYPES = {"int8": "int8_t", "float32": "float"}
_LITERALS_PER_LINE = 24


class EmitContext:
    """The arena layout of the plan, and the constants and scratch sizes found so far."""

    def __init__(
        self, graph: Graph, plan: Plan, forced_variants: dict[str, str] | None = None
    ) -> None:
        self.graph = graph
        # node -> "direct" | "gemm": int8 convolution kernels measured by ``codegen.tune``
        self.forced_variants = dict(forced_variants or {})
        self.offsets = {b.id: b.offset for b in plan.tensors}
        # a stage's pair (its output over its source) is followed by ``codegen.stages``
        self.inplace_pairs = {p.node: p for p in plan.inplace if p.granularity != "stage"}
        self.chunk_buffers = {b.node: b for b in plan.scratch if b.id.startswith("chunk:")}
        self.const_definitions: list[str] = []  # ``static const`` arrays, in first-use order
        self._const_ids: dict[str, str] = {}  # dedup key -> C identifier
        self.acc_len = 1  # int32 elements of the accumulator row on the stack
        self.col_len = 0  # int8 elements of the im2col patch on the stack (0: none)
        self.variants: dict[str, str] = {}  # node -> kernel variant, reported to the caller
        self.profile_nodes: list[str] = []  # ``-DCL_PROFILE`` slot -> node
        # while ``codegen.stages`` emits one step of a depth-first stage: the row region
        # spatial kernels are called on, and C pointers to the rows other operators read
        self.row_step: Region | None = None
        self.row_pointers: dict[str, str] = {}

    def tensor_ptr(self, name: str, node: Node) -> str:
        """A typed C pointer to a tensor: its planned arena offset, or its constant array."""
        tensor = self.graph.tensor(name)
        ctype = c_type(tensor, node)
        if name in self.row_pointers:
            return f"(({ctype} *)({self.row_pointers[name]}))"
        if tensor.is_constant:
            return self.const_array(f"t:{name}", ctype, np.asarray(tensor.data).reshape(-1))
        return f"(({ctype} *)(cl_arena + {self.offsets[name]}))"

    def const_array(self, key: str, ctype: str, values: np.ndarray, guard: str = "") -> str:
        """The identifier of a ``static const`` array (flash) holding ``values``; a key
        seen before returns the array made the first time. With ``guard`` (a macro of the
        kernel header) the array exists only in builds defining it."""
        if key in self._const_ids:
            return self._const_ids[key]
        ident = f"cl_c{len(self._const_ids)}"
        self._const_ids[key] = ident
        size = max(values.size, 1)  # C forbids zero-length arrays
        definition = f"static const {ctype} {ident}[{size}] = {{{c_initializer(ctype, values)}}};"
        if guard:
            definition = f"#if defined({guard})\n{definition}\n#endif"
        self.const_definitions.append(definition)
        return ident

    def need_acc(self, n: int) -> None:
        self.acc_len = max(self.acc_len, int(n))

    def need_col(self, n: int) -> None:
        self.col_len = max(self.col_len, int(n))


def c_initializer(ctype: str, values: np.ndarray) -> str:
    """The body of a C array initializer; floats as exact hexadecimal literals."""
    if values.size == 0:
        return "0"
    if ctype == "float":
        flat = values.astype(np.float32).reshape(-1)
        if not np.all(np.isfinite(flat)):
            raise InvalidModelError("a float constant is not finite")
        items = [float(v).hex() + "f" for v in flat.tolist()]
    else:
        items = [str(int(v)) for v in values.reshape(-1).tolist()]
    step = _LITERALS_PER_LINE
    lines = [",".join(items[i : i + step]) for i in range(0, len(items), step)]
    return "\n  " + ",\n  ".join(lines) + "\n"


def c_type(tensor: Tensor, node: Node) -> str:
    """The C element type of ``tensor``; int32 only appears as a constant (biases)."""
    if tensor.dtype == "int32":
        return "int32_t"
    ctype = CTYPES.get(tensor.dtype)
    if ctype is None:
        raise UnsupportedOperatorError(
            node.op, node.name, f"tensor {tensor.name!r} is {tensor.dtype}"
        )
    return ctype
