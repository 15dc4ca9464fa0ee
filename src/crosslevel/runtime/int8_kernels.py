"""TensorFlow Lite's int8 integer arithmetic in NumPy, bit-exact with TFLite Micro.

Why: the memory level proves a plan by running the model inside the planned arena, and an
int8 result counts only when it equals TensorFlow Lite Micro's bit for bit. So every
rounding step of TFLite's reference kernels (``tensorflow/lite/kernels/internal/reference
/integer_ops``) and of gemmlowp's fixed-point helpers is reproduced here, vectorized:

* ``quantize_multiplier`` is ``QuantizeMultiplier`` (``frexp`` of the double, rounded to a
  Q31 significand, half away from zero).
* ``multiply_by_quantized_multiplier`` is TFLite's *double-rounding* variant
  (``SaturatingRoundingDoublingHighMul`` then ``RoundingDivideByPOT``), the one the
  ``tflite-micro`` wheel is built with (``TFLITE_SINGLE_ROUNDING`` unset); the
  single-rounding variant is kept beside it (``single_rounding=True``) because some
  TFLite builds use it, and the tests show which one TFLM matches.
* Accumulators are int64 arrays wrapped to int32 where C++ keeps an ``int32_t``; sums
  of int8 products are computed as float64 matrix products (BLAS), which is exact: every
  partial sum is an integer far below 2**53.
* Scales follow the C++ types: tensor scales are float32, effective multipliers are
  computed in double in the same operation order as TFLite's Prepare functions.

All functions take and return NumPy arrays; NHWC layout for the spatial kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from crosslevel.errors import InvalidModelError

Array = np.ndarray
Num = np.ndarray | np.generic | int | float  # an array or a scalar that broadcasts
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
INT8_MIN = -128
INT8_MAX = 127


# =====================================================================================
# scalar helpers of quantization_util and gemmlowp, vectorized
# =====================================================================================
def wrap32(x: Num) -> Array:
    """Two's-complement wrap of int64 values to int32 range (C++ int32 arithmetic)."""
    return np.asarray(x, dtype=np.int64).astype(np.int32).astype(np.int64)


def tflite_round(x: Num) -> Array:
    """``TfLiteRound``: round half away from zero (NumPy's ``round`` is half to even)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def quantize_multiplier(real: Array | float) -> tuple[Array, Array]:
    """``QuantizeMultiplier``: double multipliers -> (Q31 significands, power-of-two shifts).

    A significand that rounds up to 2**31 is halved with the shift raised; shifts below
    -31 flush the multiplier to zero, as TFLite does.
    """
    value = np.atleast_1d(np.asarray(real, dtype=np.float64))
    if not np.all(np.isfinite(value)) or np.any(value < 0):
        raise InvalidModelError(f"requantization multiplier {value} is not finite and >= 0")
    fraction, shift = np.frexp(value)
    q = tflite_round(fraction * float(1 << 31)).astype(np.int64)
    shift = shift.astype(np.int64)
    full = q == (1 << 31)
    q = np.where(full, q // 2, q)
    shift = np.where(full, shift + 1, shift)
    tiny = shift < -31
    q = np.where(tiny | (value == 0), 0, q)
    shift = np.where(tiny | (value == 0), 0, shift)
    return q, shift


def saturating_rounding_doubling_high_mul(a: Num, b: Num) -> Array:
    """gemmlowp ``SaturatingRoundingDoublingHighMul`` on int32 values (ARM VQRDMULH)."""
    a64 = np.asarray(a, dtype=np.int64)
    b64 = np.asarray(b, dtype=np.int64)
    overflow = (a64 == b64) & (a64 == INT32_MIN)
    ab = a64 * b64
    nudged = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    # C++ integer division truncates toward zero
    high = np.where(nudged >= 0, nudged >> 31, -((-nudged) >> 31))
    return np.where(overflow, INT32_MAX, wrap32(high))


def rounding_divide_by_pot(x: Num, exponent: Num) -> Array:
    """gemmlowp ``RoundingDivideByPOT``: arithmetic right shift rounding half away from 0."""
    x64 = np.asarray(x, dtype=np.int64)
    e = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << e) - 1
    remainder = x64 & mask
    threshold = (mask >> 1) + (x64 < 0)
    return (x64 >> e) + (remainder > threshold)


def saturating_shift_left(x: Num, exponent: int) -> Array:
    """gemmlowp ``SaturatingRoundingMultiplyByPOT`` for a positive exponent (int32)."""
    x64 = np.asarray(x, dtype=np.int64)
    threshold = (1 << (31 - exponent)) - 1
    out = x64 << exponent
    out = np.where(x64 > threshold, INT32_MAX, out)
    return np.where(x64 < -threshold, INT32_MIN, out)


def multiply_by_quantized_multiplier(
    x: Num, multiplier: Num, shift: Num, single_rounding: bool = False
) -> Array:
    """``MultiplyByQuantizedMultiplier`` (int32 x): x * multiplier * 2**(shift - 31).

    ``multiplier``/``shift`` broadcast against ``x`` (per channel on the last axis).
    """
    x64 = wrap32(x)
    m = np.asarray(multiplier, dtype=np.int64)
    s = np.asarray(shift, dtype=np.int64)
    if single_rounding:
        total = 31 - s
        return wrap32((x64 * m + (np.int64(1) << (total - 1))) >> total)
    left = np.maximum(s, 0)
    right = np.maximum(-s, 0)
    high = saturating_rounding_doubling_high_mul(wrap32(x64 << left), m)
    return rounding_divide_by_pot(high, right)


def quantize_scalar(value: float, scale: float, zero_point: int) -> int:
    """TFLite's ``Quantize`` of a float constant: float32 division, rounded, plus zp."""
    q = tflite_round(np.float32(value) / np.float32(scale))
    return int(zero_point) + int(q)


def activation_range(activation: str, scale: float, zero_point: int) -> tuple[int, int]:
    """``CalculateActivationRangeQuantized`` for int8: the fused clamp in the int domain."""
    lo, hi = INT8_MIN, INT8_MAX
    if activation == "NONE":
        return lo, hi
    if activation == "RELU":
        return max(lo, quantize_scalar(0.0, scale, zero_point)), hi
    if activation == "RELU6":
        return (
            max(lo, quantize_scalar(0.0, scale, zero_point)),
            min(hi, quantize_scalar(6.0, scale, zero_point)),
        )
    if activation == "RELU_N1_TO_1":
        return (
            max(lo, quantize_scalar(-1.0, scale, zero_point)),
            min(hi, quantize_scalar(1.0, scale, zero_point)),
        )
    raise ValueError(f"no int8 clamp for fused activation {activation}")


# =====================================================================================
# requantization of accumulators
# =====================================================================================
@dataclass(frozen=True)
class OutputStage:
    """Requantization of int32 accumulators to int8: scale, add zero point, clamp."""

    multiplier: Array  # int64, one per output channel (or one)
    shift: Array
    zero_point: int
    act_min: int
    act_max: int
    single_rounding: bool = False

    def apply(self, acc: Array) -> Array:
        scaled = multiply_by_quantized_multiplier(
            acc, self.multiplier, self.shift, self.single_rounding
        )
        out = np.clip(scaled + self.zero_point, self.act_min, self.act_max)
        return out.astype(np.int8)


def conv_output_stage(
    input_scale: float,
    filter_scales: Array,
    output_scale: float,
    output_zero_point: int,
    activation: str,
    channels: int,
    single_rounding: bool = False,
) -> OutputStage:
    """Per-channel multipliers as ``PopulateConvolutionQuantizationParams`` computes them:
    double(input_scale) * double(filter_scale) / double(output_scale)."""
    scales = np.asarray(filter_scales, dtype=np.float32).reshape(-1)
    if scales.size == 1:
        scales = np.repeat(scales, channels)
    if scales.size != channels:
        raise InvalidModelError(f"{scales.size} filter scales for {channels} output channels")
    real = (np.float64(np.float32(input_scale)) * scales.astype(np.float64)) / np.float64(
        np.float32(output_scale)
    )
    mult, shift = quantize_multiplier(real)
    lo, hi = activation_range(activation, output_scale, output_zero_point)
    return OutputStage(mult, shift, int(output_zero_point), lo, hi, single_rounding)


# =====================================================================================
# kernels
# =====================================================================================
def _pad_nhwc(x: Array, pads: tuple[int, int, int, int], value: float) -> Array:
    top, left, bottom, right = pads
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=value)


def _out_hw(
    padded_hw: tuple[int, int],
    kernel: tuple[int, int],
    strides: tuple[int, int],
    dilations: tuple[int, int],
) -> tuple[int, int]:
    out = []
    for i in range(2):
        span = dilations[i] * (kernel[i] - 1) + 1
        size = (padded_hw[i] - span) // strides[i] + 1
        if size <= 0:
            raise InvalidModelError(f"window {kernel} does not fit the padded input {padded_hw}")
        out.append(size)
    return out[0], out[1]


def conv2d(
    x: Array,
    input_zero_point: int,
    weights: Array,
    bias: Array | None,
    stage: OutputStage,
    strides: tuple[int, int],
    dilations: tuple[int, int],
    pads: tuple[int, int, int, int],
) -> Array:
    """int8 CONV_2D, NHWC input, OHWI weights (grouped when I < input channels).

    Out-of-image taps are skipped in TFLite, which equals padding ``x - zp`` with zeros.
    """
    n, _, _, cin = x.shape
    cout, kh, kw, per_group = weights.shape
    groups = cin // per_group
    xo = _pad_nhwc(x.astype(np.float64) - input_zero_point, pads, 0.0)
    oh, ow = _out_hw((xo.shape[1], xo.shape[2]), (kh, kw), strides, dilations)
    span = (dilations[0] * (kh - 1) + 1, dilations[1] * (kw - 1) + 1)
    win = sliding_window_view(xo, span, axis=(1, 2))  # type: ignore[call-overload]
    win = win[:, : (oh - 1) * strides[0] + 1 : strides[0], : (ow - 1) * strides[1] + 1 : strides[1]]
    win = win[..., :: dilations[0], :: dilations[1]]  # [N, OH, OW, C, kh, kw]
    per_out = cout // groups
    parts = []
    for g in range(groups):
        cols = win[:, :, :, g * per_group : (g + 1) * per_group].transpose(0, 1, 2, 4, 5, 3)
        cols = cols.reshape(n * oh * ow, kh * kw * per_group)
        wg = weights[g * per_out : (g + 1) * per_out].reshape(per_out, -1).astype(np.float64)
        parts.append(cols @ wg.T)
    acc = np.concatenate(parts, axis=1).reshape(n, oh, ow, cout)
    return stage.apply(_add_bias(np.rint(acc).astype(np.int64), bias))


def depthwise_conv2d(
    x: Array,
    input_zero_point: int,
    weights: Array,
    bias: Array | None,
    stage: OutputStage,
    depth_multiplier: int,
    strides: tuple[int, int],
    dilations: tuple[int, int],
    pads: tuple[int, int, int, int],
) -> Array:
    """int8 DEPTHWISE_CONV_2D: output channel ``c * M + m`` reads input channel ``c``."""
    _, kh, kw, _ = weights.shape
    xo = _pad_nhwc(x.astype(np.int64) - input_zero_point, pads, 0)
    if depth_multiplier > 1:
        xo = np.repeat(xo, depth_multiplier, axis=3)
    oh, ow = _out_hw((xo.shape[1], xo.shape[2]), (kh, kw), strides, dilations)
    sh, sw = strides
    acc = np.zeros((x.shape[0], oh, ow, xo.shape[3]), dtype=np.int64)
    w = weights.astype(np.int64)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilations[0], j * dilations[1]
            tap = xo[:, r0 : r0 + (oh - 1) * sh + 1 : sh, c0 : c0 + (ow - 1) * sw + 1 : sw]
            acc += tap * w[0, i, j]
    return stage.apply(_add_bias(wrap32(acc), bias))


def fully_connected(
    x: Array,
    input_zero_point: int,
    weights: Array,
    weights_zero_point: int,
    bias: Array | None,
    stage: OutputStage,
) -> Array:
    """int8 FULLY_CONNECTED on ``x`` already shaped ``[..., K]``; weights ``[O, K]``."""
    xo = x.astype(np.float64) - input_zero_point
    wo = weights.astype(np.float64) - weights_zero_point
    acc = np.rint(xo @ wo.T).astype(np.int64)
    return stage.apply(_add_bias(acc, bias))


def _add_bias(acc: Array, bias: Array | None) -> Array:
    if bias is None:
        return wrap32(acc)
    return wrap32(acc + np.asarray(bias, dtype=np.int64).reshape(-1))


@dataclass(frozen=True)
class AddParams:
    """TFLite's int8 ADD parameters (``PrepareGeneralSubOp``/``CalculateOpDataAdd``)."""

    input1_offset: int
    input2_offset: int
    output_offset: int
    left_shift: int
    input1_multiplier: Array
    input1_shift: Array
    input2_multiplier: Array
    input2_shift: Array
    output_multiplier: Array
    output_shift: Array
    act_min: int
    act_max: int


def add_params(
    scale1: float, zp1: int, scale2: float, zp2: int, out_scale: float, out_zp: int, act: str
) -> AddParams:
    """Both inputs rescaled to twice the larger input scale with 20 bits of headroom."""
    left_shift = 20
    s1, s2, so = (np.float64(np.float32(s)) for s in (scale1, scale2, out_scale))
    twice_max = 2.0 * max(s1, s2)
    m1, sh1 = quantize_multiplier(s1 / twice_max)
    m2, sh2 = quantize_multiplier(s2 / twice_max)
    mo, sho = quantize_multiplier(twice_max / (float(1 << left_shift) * so))
    lo, hi = activation_range(act, out_scale, out_zp)
    return AddParams(-zp1, -zp2, out_zp, left_shift, m1, sh1, m2, sh2, mo, sho, lo, hi)


def add(a: Array, b: Array, p: AddParams, single_rounding: bool = False) -> Array:
    """int8 ADD with broadcasting (``reference_integer_ops::Add``/``BroadcastAdd``)."""
    va = wrap32((a.astype(np.int64) + p.input1_offset) << p.left_shift)
    vb = wrap32((b.astype(np.int64) + p.input2_offset) << p.left_shift)
    sa = multiply_by_quantized_multiplier(va, p.input1_multiplier, p.input1_shift, single_rounding)
    sb = multiply_by_quantized_multiplier(vb, p.input2_multiplier, p.input2_shift, single_rounding)
    raw = multiply_by_quantized_multiplier(
        wrap32(sa + sb), p.output_multiplier, p.output_shift, single_rounding
    )
    return np.clip(raw + p.output_offset, p.act_min, p.act_max).astype(np.int8)


def _pool_windows(
    x: Array,
    kernel: tuple[int, int],
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    value: float,
) -> Array:
    padded = _pad_nhwc(x, pads, value)
    oh, ow = _out_hw((padded.shape[1], padded.shape[2]), kernel, strides, (1, 1))
    win = sliding_window_view(padded, kernel, axis=(1, 2))  # type: ignore[call-overload]
    return win[
        :, : (oh - 1) * strides[0] + 1 : strides[0], : (ow - 1) * strides[1] + 1 : strides[1]
    ]


def average_pool(
    x: Array,
    kernel: tuple[int, int],
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    act_min: int,
    act_max: int,
) -> Array:
    """int8 AVERAGE_POOL_2D: sum of the real cells, divided rounding half away from zero
    (C++ truncating division of ``sum +- count/2``); padded cells are not counted."""
    sums = _pool_windows(x.astype(np.int64), kernel, strides, pads, 0).sum(axis=(4, 5))
    ones = np.ones((1, x.shape[1], x.shape[2], 1), dtype=np.int64)
    counts = _pool_windows(ones, kernel, strides, pads, 0).sum(axis=(4, 5))
    return rounded_average(sums, counts, act_min, act_max)


def rounded_average(sums: Array, counts: Array | int, act_min: int, act_max: int) -> Array:
    """TFLM's int8 average from integer sums: ``(sum +- count/2) / count`` truncated toward
    zero, then the activation clamp (also used by a streamed global pool)."""
    half = np.asarray(counts) // 2
    num = np.where(sums > 0, sums + half, sums - half)
    quotient = np.abs(num) // counts * np.sign(num)  # truncation toward zero
    return np.clip(quotient, act_min, act_max).astype(np.int8)


def max_pool(
    x: Array,
    kernel: tuple[int, int],
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    act_min: int,
    act_max: int,
) -> Array:
    """int8 MAX_POOL_2D over the real cells (padding never wins), then the clamp."""
    out = _pool_windows(x.astype(np.int64), kernel, strides, pads, -(2**40)).max(axis=(4, 5))
    return np.clip(out, act_min, act_max).astype(np.int8)


def mean(
    x: Array,
    axes: tuple[int, ...],
    keepdims: bool,
    in_scale: float,
    in_zp: int,
    out_scale: float,
    out_zp: int,
    single_rounding: bool = False,
) -> Array:
    """TFLM's int8 MEAN (``QuantizedMeanOrSum``).

    The requantization multiplier absorbs 1/count (``(m << s) / count`` with
    ``s = floor(log2(count))`` capped), then one ``MultiplyByQuantizedMultiplier`` of
    ``sum - zp * count``. Some TFLite versions take a truncating integer mean when input
    and output quantization are equal; the ``tflite-micro`` wheel here does not (checked
    by a test with equal parameters), so this path is used always.
    """
    total = x.astype(np.int64).sum(axis=axes, keepdims=keepdims)
    count = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    if count == 0:
        raise InvalidModelError("MEAN over an empty axis")
    real = np.float64(np.float32(in_scale)) / np.float64(np.float32(out_scale))
    mult, shift = quantize_multiplier(real)
    m, s = int(mult[0]), int(shift[0])
    extra = min(count.bit_length() - 1, 32, 31 + s)
    m = (m << extra) // count
    s -= extra
    shifted = wrap32(total - in_zp * count)
    out = multiply_by_quantized_multiplier(shifted, np.int64(m), np.int64(s), single_rounding)
    return np.clip(out + out_zp, INT8_MIN, INT8_MAX).astype(np.int8)


def pad(x: Array, pads: list[tuple[int, int]], pad_value: int) -> Array:
    """int8 PAD with a quantized constant (TFLM pads with the output zero point)."""
    return np.pad(x, pads, constant_values=np.int8(pad_value))


def concatenation(parts: list[Array], axis: int) -> Array:
    """TFLM's int8 CONCATENATION copies raw values (it does not requantize inputs)."""
    return np.concatenate(parts, axis=axis).astype(np.int8)


def quantize(x: Array, scale: float, zero_point: int) -> Array:
    """float -> int8 (``AffineQuantize``): round(x / float32 scale) + zp, clamped."""
    q = tflite_round(np.asarray(x, dtype=np.float32) / np.float32(scale)).astype(np.int64)
    return np.clip(q + zero_point, INT8_MIN, INT8_MAX).astype(np.int8)


def requantize(
    x: Array,
    in_scale: float,
    in_zp: int,
    out_scale: float,
    out_zp: int,
    single_rounding: bool = False,
) -> Array:
    """int8 -> int8 QUANTIZE (``Requantize``): one multiplier from the scale ratio."""
    real = np.float64(np.float32(in_scale)) / np.float64(np.float32(out_scale))
    mult, shift = quantize_multiplier(real)
    val = multiply_by_quantized_multiplier(x.astype(np.int64) - in_zp, mult, shift, single_rounding)
    return np.clip(val + out_zp, INT8_MIN, INT8_MAX).astype(np.int8)


def dequantize(x: Array, scale: float, zero_point: int) -> Array:
    """int8 -> float32: double(scale) * (q - zp), cast to float."""
    diff = x.astype(np.int64) - zero_point
    return (np.float64(np.float32(scale)) * diff).astype(np.float32)


# =====================================================================================
# softmax: gemmlowp fixed-point exp and reciprocal
# =====================================================================================
SCALED_DIFF_INTEGER_BITS = 5
ACCUMULATION_INTEGER_BITS = 12


def _exp_on_interval_between_negative_one_quarter_and_0_excl(a: Array) -> Array:
    """exp(a) for a in [-1/4, 0) in Q0.31: Taylor series around -1/8."""
    constant_term = 1895147668  # exp(-1/8)
    constant_1_over_3 = 715827883
    x = wrap32(a + (1 << 28))
    x2 = saturating_rounding_doubling_high_mul(x, x)
    x3 = saturating_rounding_doubling_high_mul(x2, x)
    x4 = saturating_rounding_doubling_high_mul(x2, x2)
    x4_over_4 = rounding_divide_by_pot(x4, 2)
    poly = wrap32(
        saturating_rounding_doubling_high_mul(wrap32(x4_over_4 + x3), constant_1_over_3) + x2
    )
    poly = rounding_divide_by_pot(poly, 1)
    return wrap32(
        constant_term + saturating_rounding_doubling_high_mul(constant_term, wrap32(x + poly))
    )


# (exponent, Q0.31 multiplier exp(-2**exponent)) of gemmlowp's barrel shifter
_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
               (2, 39332535), (3, 720401), (4, 242))  # fmt: skip


def exp_on_negative_values(a: Array, integer_bits: int) -> Array:
    """gemmlowp ``exp_on_negative_values``: Q``integer_bits``.x input <= 0 -> Q0.31."""
    fractional_bits = 31 - integer_bits
    one_quarter = 1 << (fractional_bits - 2)
    mask = one_quarter - 1
    a64 = np.asarray(a, dtype=np.int64)
    a_mod = wrap32((a64 & mask) - one_quarter)
    # Rescale<0> from Q(integer_bits): a saturating left shift by integer_bits
    result = _exp_on_interval_between_negative_one_quarter_and_0_excl(
        saturating_shift_left(a_mod, integer_bits)
    )
    remainder = wrap32(a_mod - a64)
    for exponent, multiplier in _EXP_BARREL:
        if integer_bits > exponent:
            bit = (remainder & (1 << (fractional_bits + exponent))) != 0
            result = np.where(
                bit, saturating_rounding_doubling_high_mul(result, multiplier), result
            )
    if integer_bits > 5:
        clamp = -(1 << (36 - integer_bits))
        result = np.where(a64 < clamp, 0, result)
    return np.where(a64 == 0, INT32_MAX, result)


def one_over_one_plus_x_for_x_in_0_1(a: Array) -> Array:
    """gemmlowp's 1/(1+x) for x in [0, 1) in Q0.31, by three Newton-Raphson steps."""
    a64 = np.asarray(a, dtype=np.int64)
    total = a64 + INT32_MAX
    half_denominator = np.where(total >= 0, (total + 1) // 2, -((-(total - 1)) // 2))
    one_f2 = 1 << 29
    x = wrap32(1515870810 + saturating_rounding_doubling_high_mul(half_denominator, -1010580540))
    for _ in range(3):
        hdx = saturating_rounding_doubling_high_mul(half_denominator, x)
        one_minus = wrap32(one_f2 - hdx)
        x = wrap32(
            x + saturating_shift_left(saturating_rounding_doubling_high_mul(x, one_minus), 2)
        )
    return saturating_shift_left(x, 1)


def _count_leading_zeros32(x: Array) -> Array:
    """``CountLeadingZeros`` of the values as uint32 (32 for zero).

    ``frexp`` of a float64 gives the exact bit length of integers below 2**53.
    """
    u = np.asarray(x, dtype=np.int64) & 0xFFFFFFFF
    _, bit_length = np.frexp(u.astype(np.float64))
    return 32 - bit_length.astype(np.int64)


@dataclass(frozen=True)
class SoftmaxParams:
    """``PreprocessSoftmaxScaling`` and ``CalculateInputRadius`` for int8 input."""

    input_multiplier: int
    input_left_shift: int
    diff_min: int


def softmax_params(beta: float, input_scale: float, single_rounding: bool = False) -> SoftmaxParams:
    max_real = float((1 << 30) - 1) if single_rounding else float((1 << 31) - 1)
    real = min(
        float(np.float64(np.float32(beta)) * np.float64(np.float32(input_scale)))
        * float(1 << (31 - SCALED_DIFF_INTEGER_BITS)),
        max_real,
    )
    mult, shift = quantize_multiplier(real)
    left_shift = int(shift[0])
    radius = (
        1.0
        * ((1 << SCALED_DIFF_INTEGER_BITS) - 1)
        * float(1 << (31 - SCALED_DIFF_INTEGER_BITS))
        / float(1 << left_shift)
    )
    return SoftmaxParams(int(mult[0]), left_shift, -int(np.floor(radius)))


def softmax(x: Array, p: SoftmaxParams, single_rounding: bool = False) -> Array:
    """int8 -> int8 SOFTMAX over the last axis (output scale 1/256, zero point -128)."""
    x64 = x.astype(np.int64)
    diff = x64 - x64.max(axis=-1, keepdims=True)
    used = diff >= p.diff_min
    if single_rounding:
        rescaled = multiply_by_quantized_multiplier(
            diff, np.int64(p.input_multiplier), np.int64(p.input_left_shift), True
        )
    else:
        rescaled = saturating_rounding_doubling_high_mul(
            wrap32(diff << p.input_left_shift), p.input_multiplier
        )
    exps = exp_on_negative_values(rescaled, SCALED_DIFF_INTEGER_BITS)
    # Rescale<12> from Q0.31 is a rounding right shift by 12
    accum = np.where(used, rounding_divide_by_pot(exps, ACCUMULATION_INTEGER_BITS), 0)
    sum_of_exps = wrap32(accum.sum(axis=-1, keepdims=True))
    headroom_plus_one = _count_leading_zeros32(sum_of_exps)
    num_bits_over_unit = ACCUMULATION_INTEGER_BITS - headroom_plus_one
    shifted = ((sum_of_exps & 0xFFFFFFFF) << headroom_plus_one) & 0xFFFFFFFF
    shifted_minus_one = wrap32(shifted - (1 << 31))
    shifted_scale = one_over_one_plus_x_for_x_in_0_1(shifted_minus_one)
    exponent = num_bits_over_unit + 31 - 8
    if np.any(exponent < 0) or np.any(exponent > 31):
        raise InvalidModelError("softmax sum of exponentials is out of TFLite's range")
    unsat = rounding_divide_by_pot(
        saturating_rounding_doubling_high_mul(shifted_scale, exps), exponent
    )
    out = np.clip(unsat + INT8_MIN, INT8_MIN, INT8_MAX)
    return np.where(used, out, INT8_MIN).astype(np.int8)
