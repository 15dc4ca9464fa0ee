"""Layout pass: NCHW float graphs (ONNX, PyTorch) to NHWC graphs with TFLite conventions.

TFLite and TensorFlow Lite Micro only know channels-last: CONV_2D weights ``OHWI``,
depthwise convolutions as DEPTHWISE_CONV_2D with ``[1, kh, kw, C*M]`` weights, and rank-4
activations ``NHWC``. This pass rewrites a graph so that every rank-4 activation is NHWC,
the graph input and output included, and records the permutations in
``graph.metadata["layout_conversion"]`` so callers can transpose their data
(``to_graph_layout`` / ``from_graph_layout``).

How: every tensor of the old graph may exist in the new graph in one or more
*versions*, each a permutation ``p`` of its old axes (new = old.transpose(p)). The
preferred version of a rank-4 tensor is NHWC (``p = (0, 2, 3, 1)``) and it keeps the old
name; other versions get suffixed names. Each node asks for the versions it needs;
a missing version is made by one inserted TRANSPOSE. Layout-sensitive operators
(convolutions, pooling) need NHWC; axis-carrying ones (concatenation, mean, softmax,
pad, transpose) accept any version and have their axes remapped; operators with no
layout rule run in the old order. Flattening a rank-4 tensor into a FULLY_CONNECTED
permutes the FC's weight columns instead of transposing the activation back, and
reshapes that do not change the memory order (H = W = 1) need nothing at all.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crosslevel.errors import InvalidModelError, UnsupportedOperatorError
from crosslevel.ir.graph import Graph, Node, QuantParams, Tensor, unique_name

Perm = tuple[int, ...]
NHWC_PERM: Perm = (0, 2, 3, 1)  # nhwc = nchw.transpose(NHWC_PERM)
METADATA_KEY = "layout_conversion"

_BROADCAST_OPS = ("ADD", "SUB", "MUL", "DIV", "POW", "MAXIMUM", "MINIMUM")
_UNARY_OPS = (
    "RELU", "RELU6", "RELU_N1_TO_1", "CLIP", "LEAKY_RELU", "LOGISTIC", "TANH", "HARD_SWISH",
    "SQRT", "RSQRT", "EXP", "ERF", "ABS", "NEG", "IDENTITY", "DROPOUT", "QUANTIZE",
    "DEQUANTIZE",
)  # fmt: skip


def to_nhwc(graph: Graph) -> Graph:
    """Return an NHWC copy of an NCHW float graph (identity copy for NHWC graphs).

    Raises UnsupportedOperatorError for grouped convolutions that are neither plain nor
    depthwise (TFLite has no grouped CONV_2D).
    """
    if graph.layout == "NHWC":
        return graph.copy()
    if graph.layout != "NCHW":
        raise InvalidModelError(f"unknown layout {graph.layout!r}")
    graph.validate()
    result = _Rewriter(graph.copy()).run()
    result.validate()
    return result


def graph_perm(graph: Graph, name: str) -> Perm:
    """The permutation from the original (NCHW) data of input/output ``name`` to the graph's."""
    conv = graph.metadata.get(METADATA_KEY, {})
    for side in ("inputs", "outputs"):
        perm = conv.get(side, {}).get(name)
        if perm is not None:
            return tuple(int(p) for p in perm)
    return tuple(range(len(graph.tensor(name).shape)))


def to_graph_layout(graph: Graph, name: str, x: np.ndarray) -> np.ndarray:
    """Transpose NCHW data ``x`` for graph input ``name`` into the graph's layout."""
    return np.ascontiguousarray(np.transpose(x, graph_perm(graph, name)))


def from_graph_layout(graph: Graph, name: str, y: np.ndarray) -> np.ndarray:
    """Transpose data of graph output ``name`` back to the original (NCHW) order."""
    return np.ascontiguousarray(np.transpose(y, np.argsort(graph_perm(graph, name))))


# --------------------------------------------------------------------------- permutations


def _identity(rank: int) -> Perm:
    return tuple(range(rank))


def _target(rank: int) -> Perm:
    """The preferred version of a tensor of this rank in an NHWC graph."""
    return NHWC_PERM if rank == 4 else _identity(rank)


def _inverse(p: Perm) -> Perm:
    return tuple(int(i) for i in np.argsort(p))


def _same_memory_order(shape: tuple[int, ...], p: Perm) -> bool:
    """True when transposing ``shape`` by ``p`` keeps the flat order (only 1s move)."""
    moved = [a for a in p if shape[a] != 1]
    return moved == sorted(moved)


def _permute_quant(
    quant: QuantParams | None, perm: Perm | None, pad: int = 0
) -> QuantParams | None:
    """Per-channel quantization follows its axis through a transpose (QDQ graphs)."""
    if quant is None or quant.axis is None or perm is None:
        return quant
    return QuantParams(quant.scale, quant.zero_point, perm.index(quant.axis + pad))


# --------------------------------------------------------------------------- rewriter


class _Rewriter:
    """Builds the NHWC graph node by node from the old (NCHW) one."""

    def __init__(self, old: Graph) -> None:
        self.old = old
        self.tensors: dict[str, Tensor] = {}
        self.nodes: list[Node] = []
        self.versions: dict[str, dict[Perm, str]] = {}
        self.flattened: dict[str, tuple[str, tuple[int, int, int]]] = {}
        self.derived: dict[tuple[str, str], str] = {}  # (constant, rewrite) -> new name
        self.taken: set[str] = set(old.tensors)
        self.node_names: set[str] = {n.name for n in old.nodes}
        self.consumers = old.consumers()

    # ----- entry -----------------------------------------------------------------------
    def run(self) -> Graph:
        for name in self.old.inputs:
            tensor = self.old.tensor(name)
            self._define(name, _target(len(tensor.shape)))
        for node in self.old.nodes:
            self._rewrite(node)
        outputs = [self._get(name, _target(self._rank(name))) for name in self.old.outputs]
        metadata = dict(self.old.metadata)
        metadata[METADATA_KEY] = {
            "from": "NCHW",
            "to": "NHWC",
            "inputs": {n: list(_target(self._rank(n))) for n in self.old.inputs},
            "outputs": {n: list(_target(self._rank(n))) for n in self.old.outputs},
        }
        return Graph(
            name=self.old.name,
            tensors=self.tensors,
            nodes=self.nodes,
            inputs=list(self.old.inputs),
            outputs=outputs,
            layout="NHWC",
            metadata=metadata,
        )

    # ----- tensors and versions --------------------------------------------------------
    def _rank(self, name: str) -> int:
        return len(self.old.tensor(name).shape)

    def _is_const(self, name: str) -> bool:
        return self.old.tensor(name).is_constant

    def _define(self, old_name: str, perm: Perm) -> str:
        """Add the new tensor holding ``old_name`` in version ``perm``; return its name."""
        old = self.old.tensor(old_name)
        if perm == _target(len(old.shape)):
            name = old_name
        else:
            suffix = "nchw" if perm == _identity(len(perm)) else "p" + "".join(map(str, perm))
            name = unique_name(self.taken, f"{old_name}_{suffix}")
        self.taken.add(name)
        shape = tuple(old.shape[p] for p in perm)
        quant = _permute_quant(old.quant, perm)
        self.tensors[name] = Tensor(
            name, shape, old.dtype, quant=quant, is_variable=old.is_variable
        )
        self.versions.setdefault(old_name, {})[perm] = name
        return name

    def _any_version(self, old_name: str) -> Perm:
        """The version to read when any will do: the preferred one if it exists."""
        versions = self.versions.get(old_name)
        if not versions:
            raise InvalidModelError(f"tensor {old_name!r} is read before it is produced")
        target = _target(self._rank(old_name))
        return target if target in versions else next(iter(versions))

    def _get(self, old_name: str, perm: Perm) -> str:
        """Name of ``old_name`` in version ``perm``, inserting a TRANSPOSE if needed."""
        if self._is_const(old_name):
            return self._const(old_name, perm)
        versions = self.versions.get(old_name, {})
        if perm in versions:
            return versions[perm]
        src_perm = self._any_version(old_name)
        for p, name in versions.items():  # a reshape suffices when only 1s move
            if self._reshape_compatible(old_name, p, perm):
                return self._emit_version(old_name, perm, "RESHAPE", name, {})
        inv = _inverse(src_perm)
        step = tuple(inv[p] for p in perm)
        attrs = {"perm": list(step)}
        return self._emit_version(old_name, perm, "TRANSPOSE", versions[src_perm], attrs)

    def _orig(self, old_name: str) -> str:
        """``old_name`` in its original axis order."""
        return self._get(old_name, _identity(self._rank(old_name)))

    def _reshape_compatible(self, old_name: str, have: Perm, want: Perm) -> bool:
        shape = self.old.tensor(old_name).shape
        return _same_memory_order(shape, have) and _same_memory_order(shape, want)

    def _emit_version(
        self, old_name: str, perm: Perm, op: str, src: str, attrs: dict[str, Any]
    ) -> str:
        out = self._define(old_name, perm)
        if op == "RESHAPE":
            attrs = {"shape": list(self.tensors[out].shape)}
        node_name = unique_name(self.node_names, f"{out}_{op.lower()}")
        self.node_names.add(node_name)
        self.nodes.append(Node(node_name, op, [src], [out], attrs))
        return out

    def _const(
        self, old_name: str, perm: Perm, key: str = "", data: np.ndarray | None = None
    ) -> str:
        """A constant of the new graph: ``old_name`` permuted by ``perm`` (or ``data``)."""
        versions = self.versions.setdefault(old_name, {})
        if not key and perm in versions:
            return versions[perm]
        if key and (old_name, key) in self.derived:
            return self.derived[(old_name, key)]
        old = self.old.tensor(old_name)
        assert old.data is not None
        value = np.ascontiguousarray(np.transpose(old.data, perm) if data is None else data)
        plain = not key and perm == _identity(len(old.shape))
        name = old_name if plain else unique_name(self.taken, f"{old_name}_{key or 'nhwc'}")
        self.taken.add(name)
        pad = value.ndim - len(old.shape)  # broadcast constants gain leading 1s
        quant = _permute_quant(old.quant, perm if data is None or key == "nhwc" else None, pad)
        self.tensors[name] = Tensor(name, value.shape, old.dtype, data=value, quant=quant)
        if key:
            self.derived[(old_name, key)] = name
        else:
            versions[perm] = name
        return name

    # ----- dispatch --------------------------------------------------------------------
    def _rewrite(self, node: Node) -> None:
        if len([o for o in node.outputs if o]) != 1:
            self._fallback(node)
            return
        handler = {
            "CONV_2D": self._conv,
            "DEPTHWISE_CONV_2D": self._spatial,
            "AVERAGE_POOL_2D": self._spatial,
            "MAX_POOL_2D": self._spatial,
            "BATCH_NORM": self._batch_norm,
            "CONCATENATION": self._concat,
            "MEAN": self._mean,
            "SOFTMAX": self._softmax,
            "PAD": self._pad,
            "TRANSPOSE": self._transpose,
            "RESHAPE": self._reshape,
            "FULLY_CONNECTED": self._fully_connected,
        }.get(node.op)
        if handler is not None:
            handler(node)
        elif node.op in _UNARY_OPS:
            self._unary(node)
        elif node.op in _BROADCAST_OPS:
            self._broadcast(node)
        else:
            self._fallback(node)

    def _finish(
        self, node: Node, inputs: list[str], attrs: dict[str, Any], perm: Perm, op: str = ""
    ) -> None:
        """Define the node's output in version ``perm`` and append the node."""
        out = self._define(node.outputs[0], perm)
        self.nodes.append(Node(node.name, op or node.op, inputs, [out], attrs))

    def _fallback(self, node: Node) -> None:
        """Run the node in the old order: every input in its original layout."""
        inputs = [self._orig(i) if i else "" for i in node.inputs]
        outs = [self._define(o, _identity(self._rank(o))) if o else "" for o in node.outputs]
        self.nodes.append(Node(node.name, node.op, inputs, outs, dict(node.attrs)))

    # ----- layout-sensitive operators ----------------------------------------------------
    def _conv(self, node: Node) -> None:
        x_name, w_name = node.inputs[0], node.inputs[1]
        cin = self.old.tensor(x_name).shape[1]
        w = self.old.tensor(w_name)  # constant, or computed (DEQUANTIZE in QDQ graphs)
        groups = int(node.attrs.get("groups", 1))
        attrs = {k: v for k, v in node.attrs.items() if k != "groups"}
        rest = [self._orig(b) if b else "" for b in node.inputs[2:]]
        x = self._get(x_name, NHWC_PERM)
        if groups == 1:
            weights = self._get(w_name, NHWC_PERM)  # OIHW -> OHWI
            self._finish(node, [x, weights, *rest], attrs, NHWC_PERM)
            return
        out_ch = w.shape[0]
        if groups != cin or out_ch % cin:
            raise UnsupportedOperatorError(
                "CONV_2D",
                node.name,
                f"grouped convolution with {groups} groups over {cin} channels: TFLite has "
                "only plain (1 group) and depthwise (groups = in channels) convolutions",
            )
        weights = self._get(w_name, (1, 2, 3, 0))  # [C*M, 1, kh, kw] -> [1, kh, kw, C*M]
        attrs["depth_multiplier"] = out_ch // cin
        self._finish(node, [x, weights, *rest], attrs, NHWC_PERM, op="DEPTHWISE_CONV_2D")

    def _spatial(self, node: Node) -> None:
        """Depthwise conv (weights are layout-free) and pooling: NHWC in and out."""
        x = self._get(node.inputs[0], NHWC_PERM)
        rest = [self._orig(i) if i else "" for i in node.inputs[1:]]
        self._finish(node, [x, *rest], dict(node.attrs), NHWC_PERM)

    def _batch_norm(self, node: Node) -> None:
        rank = self._rank(node.inputs[0])
        if rank not in (2, 4):
            raise UnsupportedOperatorError(
                "BATCH_NORM", node.name, f"rank-{rank} input; fold batch norm first"
            )
        perm = _target(rank)
        params = [self._orig(i) for i in node.inputs[1:]]
        self._finish(node, [self._get(node.inputs[0], perm), *params], dict(node.attrs), perm)

    # ----- axis-carrying operators -----------------------------------------------------
    def _concat(self, node: Node) -> None:
        names = [i for i in node.inputs if i]
        rank = self._rank(names[0])
        perm = _target(rank)
        axis = int(node.attrs["axis"]) % rank
        attrs = dict(node.attrs, axis=perm.index(axis))
        self._finish(node, [self._get(i, perm) for i in names], attrs, perm)

    def _mean(self, node: Node) -> None:
        x_name = node.inputs[0]
        rank = self._rank(x_name)
        perm = self._any_version(x_name)
        axes = sorted({int(a) % rank for a in node.attrs["axes"]})
        attrs = dict(node.attrs, axes=sorted(perm.index(a) for a in axes))
        if node.attrs.get("keepdims", True):
            out_perm = perm
        else:
            kept = [a for a in perm if a not in axes]
            out_perm = tuple(sorted(kept).index(a) for a in kept)
        self._finish(node, [self._get(x_name, perm)], attrs, out_perm)

    def _softmax(self, node: Node) -> None:
        x_name = node.inputs[0]
        rank = self._rank(x_name)
        perm = self._any_version(x_name)
        attrs = dict(node.attrs, axis=perm.index(int(node.attrs.get("axis", -1)) % rank))
        self._finish(node, [self._get(x_name, perm)], attrs, perm)

    def _pad(self, node: Node) -> None:
        x_name = node.inputs[0]
        perm = self._any_version(x_name)
        pads = [list(node.attrs["pads"][p]) for p in perm]
        extra = [self._orig(i) if i else "" for i in node.inputs[1:]]
        self._finish(node, [self._get(x_name, perm), *extra], dict(node.attrs, pads=pads), perm)

    def _transpose(self, node: Node) -> None:
        x_name, out_name = node.inputs[0], node.outputs[0]
        in_perm = self._any_version(x_name)
        out_perm = _target(self._rank(out_name))
        q = [int(p) for p in node.attrs["perm"]]
        inv = _inverse(in_perm)
        step = [inv[q[p]] for p in out_perm]
        source = [self._get(x_name, in_perm)]
        if step == sorted(step):  # the layout change undid the transpose: only a copy is left
            shape = [self.old.tensor(out_name).shape[p] for p in out_perm]
            self._finish(node, source, {"shape": shape}, out_perm, op="RESHAPE")
            return
        self._finish(node, source, dict(node.attrs, perm=step), out_perm)

    # ----- element-wise operators -------------------------------------------------------
    def _unary(self, node: Node) -> None:
        x_name = node.inputs[0]
        if self._is_const(x_name):
            self._fallback(node)
            return
        perm = self._any_version(x_name)
        extra = [self._orig(i) if i else "" for i in node.inputs[1:]]
        self._finish(node, [self._get(x_name, perm), *extra], dict(node.attrs), perm)

    def _broadcast(self, node: Node) -> None:
        """Rank-4 outputs run NHWC: rank-4 activations as NHWC, constants permuted."""
        out_rank = self._rank(node.outputs[0])
        names = [i for i in node.inputs if i]
        activations_ok = all(self._is_const(i) or self._rank(i) == out_rank for i in names)
        if out_rank != 4 or not activations_ok or len(names) != len(node.inputs):
            self._fallback(node)
            return
        inputs = [
            self._broadcast_const(i, node) if self._is_const(i) else self._get(i, NHWC_PERM)
            for i in names
        ]
        self._finish(node, inputs, dict(node.attrs), NHWC_PERM)

    def _broadcast_const(self, name: str, node: Node) -> str:
        """A constant operand of a rank-4 broadcast: padded to rank 4, then NHWC."""
        tensor = self.old.tensor(name)
        assert tensor.data is not None
        if tensor.data.size == 1 and len(tensor.shape) <= 1:
            return self._const(name, _identity(len(tensor.shape)))
        full = tensor.data.reshape((1,) * (4 - tensor.data.ndim) + tuple(tensor.data.shape))
        return self._const(name, NHWC_PERM, key="nhwc", data=full.transpose(NHWC_PERM))

    # ----- reshape and flatten ----------------------------------------------------------
    def _reshape(self, node: Node) -> None:
        x_name, out_name = node.inputs[0], node.outputs[0]
        in_shape = self.old.tensor(x_name).shape
        out_shape = self.old.tensor(out_name).shape
        if self._flatten_into_fc(node, in_shape, out_shape):
            return
        source = self._source_in_old_order(x_name)
        out_perm = _target(len(out_shape))
        if not _same_memory_order(out_shape, out_perm):
            out_perm = _identity(len(out_shape))
        shape = [out_shape[p] for p in out_perm]
        self._finish(node, [source], dict(node.attrs, shape=shape), out_perm)

    def _source_in_old_order(self, x_name: str) -> str:
        """A version of ``x_name`` whose flat order is the old one (transposing if needed)."""
        if self._is_const(x_name):
            return self._const(x_name, _identity(self._rank(x_name)))
        shape = self.old.tensor(x_name).shape
        for perm, name in self.versions.get(x_name, {}).items():
            if _same_memory_order(shape, perm):
                return name
        return self._get(x_name, _identity(len(shape)))

    def _flatten_into_fc(
        self, node: Node, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
    ) -> bool:
        """Flatten of an NHWC tensor feeding only FCs: keep NHWC, permute FC columns."""
        x_name, out_name = node.inputs[0], node.outputs[0]
        if (
            len(in_shape) != 4
            or len(out_shape) != 2
            or out_shape[0] != in_shape[0]
            or self._is_const(x_name)
            or NHWC_PERM not in self.versions.get(x_name, {})
            or _same_memory_order(in_shape, NHWC_PERM)
            or out_name in self.old.outputs
        ):
            return False
        users = self.consumers.get(out_name, [])
        if not users or not all(self._fc_can_permute(u, out_name) for u in users):
            return False
        flat_name = unique_name(self.taken, f"{out_name}_nhwc_flat")
        self.taken.add(flat_name)
        old = self.old.tensor(out_name)
        self.tensors[flat_name] = Tensor(flat_name, out_shape, old.dtype, quant=old.quant)
        chw = (in_shape[1], in_shape[2], in_shape[3])
        self.flattened[out_name] = (flat_name, chw)
        attrs = dict(node.attrs, shape=list(out_shape))
        source = self.versions[x_name][NHWC_PERM]
        self.nodes.append(Node(node.name, "RESHAPE", [source], [flat_name], attrs))
        return True

    def _fc_can_permute(self, node: Node, x_name: str) -> bool:
        if node.op != "FULLY_CONNECTED" or node.attrs.get("keep_num_dims", False):
            return False
        if node.inputs[0] != x_name or x_name in node.inputs[1:]:
            return False
        w = self.old.tensor(node.inputs[1])
        x = self.old.tensor(x_name)
        return w.is_constant and len(w.shape) == 2 and w.shape[1] == x.shape[-1]

    def _fully_connected(self, node: Node) -> None:
        x_name, w_name = node.inputs[0], node.inputs[1]
        rest = [self._orig(i) if i else "" for i in node.inputs[2:]]
        w = self.old.tensor(w_name)
        if x_name in self.flattened:
            flat, chw = self.flattened[x_name]
            weights = self._permuted_fc_weights(w_name, chw)
            self._finish(node, [flat, weights, *rest], dict(node.attrs), (0, 1))
            return
        x = self.old.tensor(x_name)
        implicit = (
            len(x.shape) == 4
            and not self._is_const(x_name)
            and not node.attrs.get("keep_num_dims", False)
            and w.is_constant
            and w.shape[1] == x.shape[1] * x.shape[2] * x.shape[3]
            and NHWC_PERM in self.versions.get(x_name, {})
            and not _same_memory_order(x.shape, NHWC_PERM)
        )
        if implicit:  # FC flattens its rank-4 input itself: same column permutation
            weights = self._permuted_fc_weights(w_name, (x.shape[1], x.shape[2], x.shape[3]))
            x_new = self.versions[x_name][NHWC_PERM]
            self._finish(node, [x_new, weights, *rest], dict(node.attrs), (0, 1))
            return
        source = self._source_in_old_order(x_name) if len(x.shape) == 4 else None
        if source is not None and not node.attrs.get("keep_num_dims", False):
            weights = self._get(w_name, _identity(len(w.shape)))
            self._finish(node, [source, weights, *rest], dict(node.attrs), (0, 1))
            return
        self._fallback(node)

    def _permuted_fc_weights(self, w_name: str, chw: tuple[int, int, int]) -> str:
        """FC weights whose columns follow the NHWC flatten order instead of NCHW."""
        w = self.old.tensor(w_name)
        if w.data is None:
            raise InvalidModelError(f"FC weights {w_name!r} are not constant")
        c, h, wd = chw
        data = w.data.reshape(w.shape[0], c, h, wd).transpose(0, 2, 3, 1).reshape(w.shape)
        return self._const(w_name, (0, 1), key="nhwc_cols", data=data)
