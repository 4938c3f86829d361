#!/usr/bin/env python3
"""slimd's inference engine against ONNX Runtime, op by op and on whole
models.

Every case builds a small model with the onnx Python helper (Debian's
python3-onnx), runs it through `slimd infer` and through ONNX Runtime
(onnxruntime-node, driven by tests/ort/ort_run.js with graph
optimisations off, and for the whole models also with them all on), and
requires max|slimd - ort| <= 1e-4 * max|ort| + 1e-6.  The one input is
always the float tensor `input` whose first dim is the batch; integer
data (indices, shapes, quantized weights) comes from initializers or
from a Cast inside the graph, as in exported models.

Without python3-onnx, node or tests/ort/node_modules every case is a
TAP skip saying what is missing (scripts/ort.sh installs them); CI has
them.  Runs under /usr/bin/python3 (configure's PYTHON3), which sees
Debian's numpy and onnx.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slimd_harness as h  # noqa: E402

try:
    import numpy as np
except ImportError:
    np = None
try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError:
    onnx = None

SRC = os.environ.get("SLIMD_SRCDIR", os.path.join(os.path.dirname(__file__), "..", ".."))
ORT_DIR = os.path.join(SRC, "tests", "ort")
ORT_RUN = os.path.join(ORT_DIR, "ort_run.js")
WORK = None
MISSING = None
TOL = 1e-4
TINY = 1e-6
RNG = None


def missing():
    """What this machine lacks to run the comparison, or None."""
    if np is None:
        return "numpy is not importable (apt-get install python3-numpy)"
    if onnx is None:
        return "python3-onnx is not installed (scripts/ort.sh installs it)"
    if not shutil.which("node"):
        return "node is not installed (scripts/ort.sh installs nodejs and npm)"
    if not os.path.isdir(os.path.join(ORT_DIR, "node_modules", "onnxruntime-node")):
        return "onnxruntime-node is not installed in tests/ort (run scripts/ort.sh)"
    return None


def setup():
    global WORK, MISSING, RNG
    MISSING = missing()
    WORK = h.make_tmpdir("slimd-engine-")
    if np is not None:
        RNG = np.random.default_rng(2024)


def need():
    if MISSING:
        h.skip(MISSING)


def case(fn):
    """Registers fn as a test that is a TAP skip when ONNX Runtime or
    python3-onnx is missing."""
    def run():
        need()
        fn()
    run.__name__, run.__doc__ = fn.__name__, fn.__doc__
    return h.test(run)


# ---------------------------------------------------------------- safetensors

def write_input(path, x, name="input", labels=None):
    tensors = [h.Tensor(name, "F32", list(x.shape), np.ascontiguousarray(x, np.float32).tobytes())]
    if labels is not None:
        tensors.append(h.Tensor("labels", "I64", [len(labels)],
                                np.asarray(labels, np.int64).tobytes()))
    with open(path, "wb") as f:
        f.write(h.safetensors_bytes(tensors))


def read_output(path):
    st = h.SafetensorsFile(open(path, "rb").read())
    t = st["output"]
    assert t.dtype == "F32", t.dtype
    return np.frombuffer(t.raw, np.float32).reshape(t.shape)


# ---------------------------------------------------------------- models

def vi(name, shape, elem=1):          # 1: TensorProto.FLOAT
    return helper.make_tensor_value_info(name, elem, shape)


def init(name, a, dtype=None):
    a = np.asarray(a) if dtype is None else np.asarray(a, dtype)
    return numpy_helper.from_array(a, name)


def model(nodes, in_shape, inits=(), opset=13, out_elem=1, out_name="output",
          ir=None):
    """A graph of nodes reading `input` (shape in_shape, dim 0 symbolic)
    and giving out_name."""
    shape = ["N"] + list(in_shape[1:])
    g = helper.make_graph(nodes, "g", [vi("input", shape)], [vi(out_name, None, out_elem)],
                          initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                          producer_name="slimd-test")
    m.ir_version = ir or (10 if opset >= 21 else 8)
    return m


def node(op, inputs, outputs, name=None, **attrs):
    return helper.make_node(op, inputs, outputs, name=name or (op.lower() + "_" + outputs[0]),
                            **attrs)


def randn(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


_SEQ = [0]


def run_both(m, x, opt="disabled"):
    """Runs m on x with slimd infer and ONNX Runtime; returns both outputs."""
    need()
    _SEQ[0] += 1
    d = os.path.join(WORK, "c%03d" % _SEQ[0])
    os.makedirs(d)
    mp, ip = os.path.join(d, "model.onnx"), os.path.join(d, "input.safetensors")
    sp, op = os.path.join(d, "slimd.safetensors"), os.path.join(d, "ort.safetensors")
    onnx.save(m, mp)
    write_input(ip, x)
    p = subprocess.run([h.slimd_bin(), "infer", mp, ip, sp], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, "slimd infer failed: %s" % p.stderr
    p = subprocess.run(["node", ORT_RUN, mp, ip, op, "--opt", opt], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, "ort_run failed: %s" % p.stderr
    return read_output(sp), read_output(op)


def check(m, x, what="", opt="disabled", tol=TOL):
    a, b = run_both(m, x, opt)
    assert a.shape == b.shape, "%s: shape %s, ONNX Runtime %s" % (what, a.shape, b.shape)
    err = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    assert err <= tol * scale + TINY, "%s: max|diff| %.3g over max|ort| %.3g (tol %g)\n" \
        "slimd %s\nort   %s" % (what, err, scale, tol, a.ravel()[:8], b.ravel()[:8])
    return a


def one(op, in_shape, extra_inputs=(), inits=(), opset=13, out_elem=1, x=None,
        what=None, **attrs):
    """A one-node model op(input, *extra_inputs) -> output, checked."""
    m = model([node(op, ["input"] + list(extra_inputs), ["output"], **attrs)], in_shape, inits,
              opset, out_elem)
    return check(m, randn(*in_shape) if x is None else x, what or op)


# ---------------------------------------------------------------- elementwise

@case
def test_binary_broadcast():
    """Add/Sub/Mul/Div with numpy broadcasting, either operand the input"""
    shapes = [(4, 1), (1, 5), (), (5,), (3, 1, 1), (2, 3, 4, 5), (1, 3, 4, 1)]
    for op in ("Add", "Sub", "Mul", "Div"):
        for s in shapes:
            b = randn(*s) if op != "Div" else (np.abs(randn(*s)) + 0.5).astype(np.float32)
            one(op, (2, 3, 4, 5), ["b"], [init("b", b)], what="%s x %s" % (op, s))
        c = randn(2, 3, 4, 5) if op != "Div" else np.abs(randn(2, 3, 4, 5)) + 0.5
        m = model([node(op, ["c", "input"], ["output"])], (2, 3, 4, 5), [init("c", c[:1])])
        x = randn(2, 3, 4, 5) if op != "Div" else (np.abs(randn(2, 3, 4, 5)) + 0.5)
        check(m, x.astype(np.float32), "%s c x" % op)
    one("Mul", (3, 7), ["input"], what="x * x")


@case
def test_integer_wrap():
    """int32 and int64 Add/Sub/Mul that overflow wrap as ONNX Runtime's do (two's
    complement), at run time and folded from initializers at load time"""
    big = {TensorProto.INT32: (2.0e9, np.int32), TensorProto.INT64: (9.0e18, np.int64)}
    for to, (v, dt) in big.items():
        x = np.array([[v, -v, v / 2, -v / 2, 123.0]], np.float32)
        c = np.array(x[0].astype(np.float64).astype(dt))
        for op in ("Add", "Sub", "Mul"):
            k = np.array([3] * 5, dt) if op == "Mul" else -c if op == "Sub" else c
            m = model([node("Cast", ["input"], ["xi"], to=to),
                       node(op, ["xi", "k"], ["yi"]),
                       node("Cast", ["yi"], ["output"], to=TensorProto.FLOAT)], (1, 5),
                      [init("k", k)])
            check(m, x, "%s %s at run time" % (op, dt.__name__))
            m = model([node(op, ["c", "k"], ["yi"]),
                       node("Cast", ["yi"], ["yf"], to=TensorProto.FLOAT),
                       node("Add", ["yf", "input"], ["output"])], (1, 5),
                      [init("c", c), init("k", k)])
            check(m, np.zeros((1, 5), np.float32), "%s %s folded" % (op, dt.__name__))


@case
def test_activations():
    """Relu, LeakyRelu, Sigmoid, Tanh, Erf, Clip (opset 6 attributes, 11+ inputs)"""
    x = randn(4, 3, 5, scale=4.0)
    for op in ("Relu", "Sigmoid", "Tanh", "Erf"):
        one(op, x.shape, x=x)
    one("LeakyRelu", x.shape, x=x, alpha=0.2)
    one("LeakyRelu", x.shape, x=x, what="LeakyRelu default alpha")
    one("Clip", x.shape, x=x, opset=6, min=-1.0, max=2.0, what="Clip-6")
    one("Clip", x.shape, ["lo", "hi"], [init("lo", np.float32(-0.5)), init("hi", np.float32(1.5))],
        x=x, what="Clip-13")
    one("Clip", x.shape, ["", "hi"], [init("hi", np.float32(1.0))], x=x, what="Clip-13 max only")


@case
def test_softmax_opsets():
    """Softmax/LogSoftmax: 2-D coercion before opset 13, one axis from 13"""
    x = randn(2, 3, 4, scale=3.0)
    for op in ("Softmax", "LogSoftmax"):
        for opset in (11, 13):
            for axis in (None, 0, 1, 2, -1):
                kw = {} if axis is None else {"axis": axis}
                one(op, x.shape, x=x, opset=opset, what="%s-%d axis %s" % (op, opset, axis), **kw)


@case
def test_cast():
    """Cast between FLOAT, FLOAT16, DOUBLE, INT64, INT32, INT8, UINT8, BOOL"""
    x = randn(3, 8, scale=40.0)
    types = [TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.INT32,
             TensorProto.INT8, TensorProto.BOOL]
    for t in types:
        m = model([node("Cast", ["input"], ["c"], to=t), node("Cast", ["c"], ["output"],
                                                              to=TensorProto.FLOAT)],
                  x.shape)
        xs = np.clip(x, -120, 120) if t == TensorProto.INT8 else x
        check(m, xs, "float -> %s -> float" % TensorProto.DataType.Name(t))
    xu = np.abs(x).clip(0, 250).astype(np.float32)
    m = model([node("Cast", ["input"], ["c"], to=TensorProto.UINT8),
               node("Cast", ["c"], ["d"], to=TensorProto.INT64),
               node("Cast", ["d"], ["e"], to=TensorProto.FLOAT16),
               node("Cast", ["e"], ["output"], to=TensorProto.FLOAT)], x.shape)
    check(m, xu, "float -> uint8 -> int64 -> float16 -> float")
    # fp16 arithmetic: values rounded to binary16 after each op.  ONNX
    # Runtime's CPU provider runs an fp16 Mul in float between casts it
    # inserts and then folds away, so numpy's float16 is the reference here
    m = model([node("Cast", ["input"], ["c"], to=TensorProto.FLOAT16),
               node("Mul", ["c", "c"], ["d"]),
               node("Cast", ["d"], ["output"], to=TensorProto.FLOAT)], x.shape)
    xh = (x / 10).astype(np.float16)
    a, _ = run_both(m, (x / 10).astype(np.float32))
    assert np.array_equal(a, (xh * xh).astype(np.float32)), "float16 Mul: %s vs %s" % (
        a.ravel()[:6], (xh * xh).ravel()[:6])
    # integer output of the graph, written as float
    m = model([node("Cast", ["input"], ["output"], to=TensorProto.INT64)], x.shape,
              out_elem=TensorProto.INT64)
    check(m, x, "INT64 graph output")


# ---------------------------------------------------------------- matrices

@case
def test_gemm_flags():
    """Gemm: transA, transB, alpha, beta, C of every broadcast shape, no C"""
    m_, k, n = 5, 7, 6
    cs = {"none": None, "scalar": randn(1), "row": randn(n), "row2": randn(1, n),
          "col": randn(m_, 1), "full": randn(m_, n)}
    for ta in (0, 1):
        for tb in (0, 1):
            for cname, c in cs.items():
                b = randn(n, k) if tb else randn(k, n)
                x = randn(k, m_) if ta else randn(m_, k)
                ins, inits = ["b"], [init("b", b)]
                if c is not None:
                    ins.append("c")
                    inits.append(init("c", c))
                m = model([node("Gemm", ["input"] + ins, ["output"], transA=ta, transB=tb,
                                alpha=0.7, beta=1.3)], x.shape, inits)
                check(m, x, "Gemm transA %d transB %d C %s" % (ta, tb, cname))
    m = model([node("Gemm", ["input", "b", "c"], ["output"])], (4, 3),
              [init("b", randn(3, 2)), init("c", randn(2))], opset=9)
    check(m, randn(4, 3), "Gemm-9 defaults")


@case
def test_matmul():
    """MatMul: 2-D, batched with a 2-D weight, batch broadcast, 1-D operands"""
    one("MatMul", (4, 6), ["w"], [init("w", randn(6, 3))], what="2-D")
    one("MatMul", (2, 5, 6), ["w"], [init("w", randn(6, 3))], what="3-D x 2-D")
    one("MatMul", (2, 3, 5, 6), ["w"], [init("w", randn(3, 6, 4))], what="4-D x 3-D broadcast")
    one("MatMul", (2, 5, 6), ["w"], [init("w", randn(1, 6, 4))], what="3-D x [1, K, N]")
    one("MatMul", (2, 5, 6), ["w"], [init("w", randn(6))], what="x 1-D")
    m = model([node("MatMul", ["w", "input"], ["output"])], (3, 6, 2), [init("w", randn(4, 6))])
    check(m, randn(3, 6, 2), "2-D x 3-D")
    m = model([node("MatMul", ["w", "input"], ["output"])], (6, 2), [init("w", randn(6))])
    check(m, randn(6, 2), "1-D x 2-D")


# ---------------------------------------------------------------- shapes

@case
def test_flatten_reshape():
    """Flatten axes; Reshape with 0 and -1, allowzero (opset 14), opset 1 attribute"""
    x = randn(2, 3, 4, 5)
    for axis in (0, 1, 2, 3, 4, -1, -3):
        one("Flatten", x.shape, x=x, axis=axis, what="Flatten axis %d" % axis)
    for shape in ([0, -1], [2, 3, 20], [-1, 5], [0, 0, -1], [2, -1, 2, 5]):
        one("Reshape", x.shape, ["s"], [init("s", np.array(shape, np.int64))], x=x,
            what="Reshape %s" % shape)
    one("Reshape", x.shape, ["s"], [init("s", np.array([2, 60], np.int64))], x=x, opset=14,
        allowzero=1, what="Reshape allowzero")
    one("Reshape", x.shape, x=x, opset=1, shape=[2, -1], what="Reshape-1 attribute")


@case
def test_transpose():
    """Transpose with perms and the default reversal"""
    x = randn(2, 3, 4, 5)
    for perm in ([0, 2, 3, 1], [3, 1, 0, 2], [0, 1, 3, 2], None):
        kw = {} if perm is None else {"perm": perm}
        one("Transpose", x.shape, x=x, what="perm %s" % perm, **kw)
    m = model([node("Cast", ["input"], ["i"], to=TensorProto.INT64),
               node("Transpose", ["i"], ["t"], perm=[1, 0]),
               node("Cast", ["t"], ["output"], to=TensorProto.FLOAT)], (3, 4))
    check(m, randn(3, 4, scale=10), "INT64 transpose")


@case
def test_squeeze_unsqueeze_opsets():
    """Squeeze/Unsqueeze: axes attribute before opset 13, input from 13"""
    x = randn(2, 1, 3, 1)
    one("Squeeze", x.shape, x=x, opset=11, axes=[1], what="Squeeze-11 axes [1]")
    one("Squeeze", x.shape, x=x, opset=11, what="Squeeze-11 all")
    one("Squeeze", x.shape, ["a"], [init("a", np.array([-1, 1], np.int64))], x=x,
        what="Squeeze-13 axes input")
    one("Squeeze", x.shape, x=x, what="Squeeze-13 all")
    one("Unsqueeze", x.shape, x=x, opset=11, axes=[0, 5], what="Unsqueeze-11")
    one("Unsqueeze", x.shape, ["a"], [init("a", np.array([1, -1], np.int64))], x=x,
        what="Unsqueeze-13")


@case
def test_concat_split():
    """Concat along axes (with negative axis); Split by attribute, input, equal parts"""
    x = randn(2, 3, 4)
    for axis, shape in ((0, (1, 3, 4)), (1, (2, 2, 4)), (-1, (2, 3, 6))):
        m = model([node("Concat", ["input", "c", "input"], ["output"], axis=axis)], x.shape,
                  [init("c", randn(*shape))])
        check(m, x, "Concat axis %d" % axis)
    # Split: the second part, so sizes matter
    m = model([node("Split", ["input"], ["a", "output"], axis=1, split=[1, 2])], x.shape,
              opset=11)
    check(m, x, "Split-11 attribute")
    m = model([node("Split", ["input", "s"], ["a", "output", "c"], axis=2)], x.shape,
              [init("s", np.array([1, 2, 1], np.int64))], opset=13)
    check(m, x, "Split-13 input")
    m = model([node("Split", ["input"], ["a", "output"], axis=-1)], x.shape, opset=13)
    check(m, x, "Split-13 equal")


@case
def test_shape_gather_chain():
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape of exported models (int64 all along)"""
    x = randn(3, 4, 5)
    for opset in (11, 13):
        if opset < 13:
            unsq = node("Unsqueeze", ["n"], ["n1"], axes=[0])
        else:
            unsq = node("Unsqueeze", ["n", "ax0"], ["n1"])
        m = model([node("Shape", ["input"], ["s"]),
                   node("Gather", ["s", "zero"], ["n"], axis=0),
                   unsq,
                   node("Concat", ["n1", "minus1"], ["shape"], axis=0),
                   node("Reshape", ["input", "shape"], ["output"])], x.shape,
                  [init("zero", np.array(0, np.int64)), init("minus1", np.array([-1], np.int64)),
                   init("ax0", np.array([0], np.int64))], opset=opset)
        check(m, x, "flatten by shape chain, opset %d" % opset)
    # the Shape output itself, and Shape's start/end (opset 15)
    m = model([node("Shape", ["input"], ["output"])], x.shape, out_elem=TensorProto.INT64)
    check(m, x, "Shape output")
    m = model([node("Shape", ["input"], ["output"], start=1, end=-0)], x.shape, opset=15,
              out_elem=TensorProto.INT64)
    check(m, x, "Shape-15 start 1")
    m = model([node("Shape", ["input"], ["output"], start=-2)], x.shape, opset=15,
              out_elem=TensorProto.INT64)
    check(m, x, "Shape-15 start -2")
    # integer arithmetic on shapes: Mul/Div/Sub/Add of INT64
    m = model([node("Shape", ["input"], ["s"]),
               node("Slice", ["s", "one", "three"], ["hw"]),
               node("Mul", ["hw", "two"], ["hw2"]),
               node("Div", ["hw2", "two"], ["hw3"]),
               node("Sub", ["hw3", "zero1"], ["hw4"]),
               node("Add", ["hw4", "zero1"], ["hw5"]),
               node("Concat", ["minus1", "hw5"], ["shape"], axis=0),
               node("Reshape", ["input", "shape"], ["output"])], x.shape,
              [init("one", np.array([1], np.int64)), init("three", np.array([3], np.int64)),
               init("two", np.array([2], np.int64)), init("zero1", np.array([0], np.int64)),
               init("minus1", np.array([-1], np.int64))])
    check(m, x, "INT64 arithmetic on a shape")


@case
def test_gather():
    """Gather: float data, int64 and int32 indices, negative, scalar and 2-D indices"""
    x = randn(3, 5, 4)
    one("Gather", x.shape, ["i"], [init("i", np.array([4, 0, -1, 2], np.int64))], x=x, axis=1,
        what="axis 1")
    one("Gather", x.shape, ["i"], [init("i", np.array([[1, 0], [2, 2]], np.int32))], x=x,
        axis=-1, what="axis -1, 2-D int32 indices")
    one("Gather", x.shape, ["i"], [init("i", np.array(1, np.int64))], x=x, axis=0,
        what="axis 0 scalar")
    m = model([node("Gather", ["table", "idx"], ["output"], axis=0),
               node("Cast", ["input"], ["idx"], to=TensorProto.INT64)], (2, 3),
              [init("table", randn(10, 4))])
    check(m, np.array([[1, 9, 3], [0, 0, 7]], np.float32), "embedding lookup (nodes unsorted)")


@case
def test_cumsum():
    """CumSum: float on each axis, exclusive, reverse, both, negative axis; int32 and int64
    (through Cast) at run time"""
    x = randn(3, 5, 4)
    for axis in (0, 1, 2, -1):
        for ex, rev in ((0, 0), (1, 0), (0, 1), (1, 1)):
            one("CumSum", x.shape, ["a"], [init("a", np.array(axis, np.int64))], x=x,
                exclusive=ex, reverse=rev, what="axis %d exclusive %d reverse %d" % (
                    axis, ex, rev))
    one("CumSum", x.shape, ["a"], [init("a", np.array([1], np.int32))], x=x,
        what="axis as a 1-element int32 tensor")
    for to in (TensorProto.INT32, TensorProto.INT64):
        m = model([node("Cast", ["input"], ["xi"], to=to),
                   node("CumSum", ["xi", "a"], ["ci"], reverse=1),
                   node("Cast", ["ci"], ["output"], to=TensorProto.FLOAT)], (2, 7),
                  [init("a", np.array(1, np.int64))])
        check(m, np.array([[1, -2, 3, 4, 0, 9, 100], [5, 5, 5, -7, 1, 1, 2]], np.float32),
              "int%d" % (32 if to == TensorProto.INT32 else 64))


@case
def test_constant_of_shape_scatter_elements():
    """ConstantOfShape (default 0, float and int64 values), ScatterElements (axis 0 and 1,
    negative indices, int32 and int64 indices): what a sparse artifact's graph uses"""
    m = model([node("Shape", ["input"], ["s"]),
               node("ConstantOfShape", ["s"], ["z"]),
               node("Add", ["z", "input"], ["output"])], (2, 3))
    check(m, randn(2, 3), "ConstantOfShape default 0")
    m = model([node("Shape", ["input"], ["s"]),
               node("ConstantOfShape", ["s"], ["z"],
                    value=helper.make_tensor("v", TensorProto.FLOAT, [1], [2.5])),
               node("Mul", ["z", "input"], ["output"])], (2, 3))
    check(m, randn(2, 3), "ConstantOfShape 2.5")
    m = model([node("Shape", ["input"], ["s"]),
               node("ConstantOfShape", ["s"], ["z"],
                    value=helper.make_tensor("v", TensorProto.INT64, [1], [7])),
               node("Cast", ["z"], ["output"], to=TensorProto.FLOAT)], (4,))
    check(m, randn(4), "ConstantOfShape int64 7")
    x = randn(4, 5)
    one("ScatterElements", x.shape, ["i", "u"],
        [init("i", np.array([[1, 0, 3, -1, 2]], np.int64)), init("u", randn(1, 5))], x=x,
        axis=0, what="axis 0, int64, one row of updates")
    one("ScatterElements", x.shape, ["i", "u"],
        [init("i", np.array([[4, 0], [1, 3], [2, 2], [0, 1]], np.int32)), init("u", randn(4, 2))],
        x=x, axis=1, what="axis 1, int32")
    one("ScatterElements", (10,), ["i", "u"],
        [init("i", np.array([9, 0, 4], np.int32)), init("u", randn(3))], x=randn(10),
        what="1-D, the sparse artifact's form")


@case
def test_slice_opsets():
    """Slice: attributes before opset 10; inputs with axes and steps (negative, and longer
    than the dim: INT64_MAX, INT64_MIN) from 10"""
    x = randn(4, 6, 5)
    one("Slice", x.shape, x=x, opset=9, starts=[1, 0], ends=[3, -1], axes=[1, 2],
        what="Slice-9 axes")
    one("Slice", x.shape, x=x, opset=9, starts=[0, 1, 1], ends=[2, 100, 4], what="Slice-9")
    big = np.iinfo(np.int64).max
    cases = [([1], [big], [1], [1]), ([-1], [-big], [1], [-1]), ([5, 4], [0, 0], [1, 2], [-2, -1]),
             ([0, 1], [6, 5], [1, 2], [2, 3]), ([2], [2], [0], [1]), ([0], [-1], [-1], None),
             ([1, 0], [big, big], [1, 2], [big, big]), ([-1], [-big], [1], [-big - 1])]
    for st, en, ax, sp in cases:
        ins = ["s", "e", "a"] + (["p"] if sp else [])
        inits = [init("s", np.array(st, np.int64)), init("e", np.array(en, np.int64)),
                 init("a", np.array(ax, np.int64))]
        if sp:
            inits.append(init("p", np.array(sp, np.int64)))
        one("Slice", x.shape, ins, inits, x=x, what="Slice-13 %s %s %s %s" % (st, en, ax, sp))


@case
def test_constant_identity_dropout():
    """Constant (value, value_float(s), value_int(s)), Identity, Dropout with its mask"""
    x = randn(2, 3)
    c = helper.make_tensor("v", TensorProto.FLOAT, [3], [1.0, -2.0, 0.5])
    m = model([node("Constant", [], ["c"], value=c),
               node("Constant", [], ["f"], value_float=2.5),
               node("Constant", [], ["fs"], value_floats=[1.0, 2.0, 3.0]),
               node("Constant", [], ["s"], value_ints=[3, 2]),
               node("Add", ["input", "c"], ["a"]),
               node("Mul", ["a", "f"], ["b"]),
               node("Sub", ["b", "fs"], ["d"]),
               node("Identity", ["d"], ["e"]),
               node("Dropout", ["e"], ["g", "mask"]),
               node("Reshape", ["g", "s"], ["output"])], x.shape, opset=13)
    check(m, x, "Constant/Identity/Dropout")
    m = model([node("Dropout", ["input"], ["output"], ratio=0.3)], x.shape, opset=7)
    check(m, x, "Dropout-7")
    # as torch exports it: ratio and training_mode (false) as inputs
    m = model([node("Dropout", ["input", "r", "t"], ["output"])], x.shape,
              [init("r", np.float32(0.25)), init("t", np.array(False))], opset=13)
    check(m, x, "Dropout-13 training_mode false")


# ---------------------------------------------------------------- convolutions and pools

def conv_case(what, x_shape, w_shape, bias=True, opset=13, **attrs):
    inits = [init("w", randn(*w_shape, scale=0.5))]
    ins = ["input", "w"]
    if bias:
        inits.append(init("b", randn(w_shape[0])))
        ins.append("b")
    m = model([node("Conv", ins, ["output"], **attrs)], x_shape, inits, opset)
    check(m, randn(*x_shape), "Conv " + what)


@case
def test_conv():
    """Conv: pads, strides, dilations, groups, depthwise, auto_pad, 1x1, 1-D, no bias"""
    conv_case("3x3 pad 1", (2, 3, 8, 8), (4, 3, 3, 3), pads=[1, 1, 1, 1])
    conv_case("3x3 no pad", (2, 3, 8, 7), (4, 3, 3, 3), bias=False)
    conv_case("stride 2", (2, 3, 9, 9), (5, 3, 3, 3), strides=[2, 2], pads=[1, 1, 1, 1])
    conv_case("strides 2x3 asym pads", (2, 3, 9, 11), (5, 3, 3, 2), strides=[2, 3],
              pads=[0, 1, 2, 1])
    conv_case("dilation 2", (2, 2, 10, 10), (3, 2, 3, 3), dilations=[2, 2], pads=[2, 2, 2, 2])
    conv_case("dilations 2x1 stride 2", (1, 2, 11, 9), (3, 2, 3, 2), dilations=[2, 1],
              strides=[2, 1])
    conv_case("group 2", (2, 4, 7, 7), (6, 2, 3, 3), group=2, pads=[1, 1, 1, 1])
    conv_case("depthwise", (2, 4, 6, 6), (4, 1, 3, 3), group=4, pads=[1, 1, 1, 1])
    conv_case("SAME_UPPER stride 2", (2, 3, 8, 7), (4, 3, 3, 3), auto_pad="SAME_UPPER",
              strides=[2, 2])
    conv_case("SAME_LOWER", (2, 3, 7, 8), (4, 3, 4, 4), auto_pad="SAME_LOWER")
    conv_case("VALID", (2, 3, 7, 8), (4, 3, 3, 2), auto_pad="VALID", strides=[2, 1])
    conv_case("1x1", (2, 8, 5, 5), (6, 8, 1, 1))
    conv_case("1x1 group 2", (2, 8, 5, 5), (6, 4, 1, 1), group=2)
    conv_case("1x1 stride 2", (2, 8, 5, 5), (6, 8, 1, 1), strides=[2, 2])
    conv_case("1-D", (2, 3, 12), (4, 3, 3), pads=[1, 2], strides=[2])
    conv_case("kernel_shape given", (2, 3, 6, 6), (4, 3, 3, 3), kernel_shape=[3, 3])
    conv_case("opset 11", (2, 3, 6, 6), (4, 3, 3, 3), opset=11, pads=[1, 1, 1, 1])
    conv_case("batch 1", (1, 3, 6, 6), (4, 3, 3, 3), pads=[1, 1, 1, 1])


def pool_case(op, what, x_shape, opset=13, **attrs):
    m = model([node(op, ["input"], ["output"], **attrs)], x_shape, [], opset)
    check(m, randn(*x_shape), "%s %s" % (op, what))


@case
def test_pools():
    """MaxPool, AveragePool (count_include_pad, ceil_mode, pads, auto_pad), global pools"""
    x = (2, 3, 9, 8)
    pool_case("MaxPool", "2x2 s2", (2, 3, 8, 8), kernel_shape=[2, 2], strides=[2, 2])
    pool_case("MaxPool", "2x2 s2 odd", x, kernel_shape=[2, 2], strides=[2, 2])
    pool_case("MaxPool", "3x3 s2 pad 1", x, kernel_shape=[3, 3], strides=[2, 2],
              pads=[1, 1, 1, 1])
    pool_case("MaxPool", "ceil_mode", x, kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    pool_case("MaxPool", "ceil_mode pads", x, kernel_shape=[2, 2], strides=[2, 2],
              pads=[1, 1, 1, 1], ceil_mode=1)
    pool_case("MaxPool", "dilations", x, kernel_shape=[2, 2], dilations=[2, 2])
    pool_case("MaxPool", "SAME_UPPER", x, kernel_shape=[3, 3], strides=[2, 2],
              auto_pad="SAME_UPPER")
    pool_case("MaxPool", "SAME_LOWER", x, kernel_shape=[2, 2], strides=[2, 2],
              auto_pad="SAME_LOWER")
    pool_case("MaxPool", "1-D", (2, 3, 11), kernel_shape=[3], strides=[2])
    for cip in (0, 1):
        pool_case("AveragePool", "pads cip %d" % cip, x, kernel_shape=[3, 3], strides=[2, 2],
                  pads=[1, 1, 1, 1], count_include_pad=cip)
        pool_case("AveragePool", "asym pads cip %d" % cip, x, kernel_shape=[3, 2],
                  strides=[1, 2], pads=[0, 1, 2, 0], count_include_pad=cip)
        pool_case("AveragePool", "ceil_mode cip %d" % cip, x, kernel_shape=[3, 3],
                  strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=cip)
        pool_case("AveragePool", "SAME_UPPER cip %d" % cip, x, kernel_shape=[3, 3],
                  strides=[2, 2], auto_pad="SAME_UPPER", count_include_pad=cip)
    pool_case("AveragePool", "2x2 s2", (2, 3, 8, 8), kernel_shape=[2, 2], strides=[2, 2])
    pool_case("AveragePool", "opset 10", x, opset=10, kernel_shape=[2, 2], strides=[2, 2])
    pool_case("GlobalAveragePool", "", x)
    pool_case("GlobalAveragePool", "1-D", (2, 3, 7))
    pool_case("GlobalMaxPool", "", x)


@case
def test_batchnorm():
    """BatchNormalization (inference) in opsets 9 and 15, 4-D and 2-D inputs"""
    for opset, shape in ((9, (2, 4, 5, 5)), (15, (2, 4, 5, 5)), (15, (3, 4))):
        c = shape[1]
        inits = [init("s", randn(c)), init("b", randn(c)), init("m", randn(c)),
                 init("v", (np.abs(randn(c)) + 0.1).astype(np.float32))]
        m = model([node("BatchNormalization", ["input", "s", "b", "m", "v"], ["output"],
                        epsilon=1e-3)], shape, inits, opset)
        check(m, randn(*shape), "BatchNormalization-%d %s" % (opset, shape))


# ---------------------------------------------------------------- quantization

def pack4(q):
    """INT4/UINT4 values, two per byte, low nibble first."""
    q = np.asarray(q).ravel().astype(np.int64) & 15
    if q.size % 2:
        q = np.append(q, 0)
    return (q[0::2] | (q[1::2] << 4)).astype(np.uint8).tobytes()


def int4_init(name, q, signed=True):
    t = TensorProto()
    t.name = name
    t.data_type = 22 if signed else 21        # INT4 / UINT4 (onnx >= 1.16 names)
    t.dims.extend(q.shape)
    t.raw_data = pack4(q)
    return t


@case
def test_quantize_dequantize():
    """QuantizeLinear/DequantizeLinear: per tensor, per axis, int8/uint8/int32"""
    x = randn(3, 4, 5, scale=2.0)
    # per-tensor Q -> DQ round trip (uint8 by default, int8 with a zero point)
    m = model([node("QuantizeLinear", ["input", "s"], ["q"]),
               node("DequantizeLinear", ["q", "s"], ["output"])], x.shape,
              [init("s", np.float32(0.02))], opset=13)
    check(m, np.abs(x), "uint8 per tensor, no zero point")
    m = model([node("QuantizeLinear", ["input", "s", "z"], ["q"]),
               node("DequantizeLinear", ["q", "s", "z"], ["output"])], x.shape,
              [init("s", np.float32(0.03)), init("z", np.int8(-3))], opset=13)
    check(m, x, "int8 per tensor")
    # per axis, both ways
    for axis in (1, 2, -1):
        n = x.shape[axis]
        m = model([node("QuantizeLinear", ["input", "s", "z"], ["q"], axis=axis),
                   node("DequantizeLinear", ["q", "s", "z"], ["output"], axis=axis)], x.shape,
                  [init("s", (np.abs(randn(n)) * 0.05 + 0.01).astype(np.float32)),
                   init("z", RNG.integers(100, 150, n).astype(np.uint8))], opset=13)
        check(m, x, "uint8 per axis %d" % axis)
    # the quantized integers themselves as the output
    m = model([node("QuantizeLinear", ["input", "s", "z"], ["output"], axis=1)], x.shape,
              [init("s", np.array([0.01, 0.02, 0.05, 0.1], np.float32)),
               init("z", np.array([0, 5, -5, 100], np.int8))], opset=13,
              out_elem=TensorProto.INT8)
    check(m, x, "QuantizeLinear int8 output (saturating)")
    # an int8 weight dequantized per output channel, then used (folded at compile time)
    wq = RNG.integers(-127, 128, (6, 5)).astype(np.int8)
    m = model([node("DequantizeLinear", ["wq", "ws"], ["w"], axis=1),
               node("MatMul", ["input", "w"], ["output"])], (4, 6),
              [init("wq", wq), init("ws", (np.abs(randn(5)) * 0.01).astype(np.float32))])
    check(m, randn(4, 6), "int8 weight per axis through MatMul")
    # int32 bias, the QDQ form of a bias
    m = model([node("DequantizeLinear", ["bq", "bs"], ["b"]),
               node("Add", ["input", "b"], ["output"])], (3, 5),
              [init("bq", RNG.integers(-5000, 5000, 5).astype(np.int32)),
               init("bs", np.float32(0.001))], opset=13)
    check(m, randn(3, 5), "int32 bias")


@case
def test_quant_blocked_int4():
    """Opset 21: blocked DequantizeLinear of INT4/UINT4 weights, blocked QuantizeLinear"""
    k, n, bs = 10, 6, 4                           # 10 rows in blocks of 4: the last block short
    nb = (k + bs - 1) // bs
    for signed in (True, False):
        q = RNG.integers(-8, 8, (k, n)) if signed else RNG.integers(0, 16, (k, n))
        scale = (np.abs(randn(nb, n)) * 0.1 + 0.01).astype(np.float32)
        ins, inits = ["wq", "ws"], [int4_init("wq", q, signed), init("ws", scale)]
        zp = RNG.integers(-8, 8, (nb, n)) if signed else RNG.integers(0, 16, (nb, n))
        ins.append("wz")
        inits.append(int4_init("wz", zp, signed))
        m = model([node("DequantizeLinear", ins, ["w"], axis=0, block_size=bs),
                   node("MatMul", ["input", "w"], ["output"])], (3, k), inits, opset=21)
        check(m, randn(3, k), "%s blocked axis 0" % ("INT4" if signed else "UINT4"))
    # blocked along the last axis, int8, no zero point
    q = RNG.integers(-127, 128, (n, k)).astype(np.int8)
    m = model([node("DequantizeLinear", ["wq", "ws"], ["w"], axis=1, block_size=bs),
               node("Gemm", ["input", "w"], ["output"], transB=1)], (3, k),
              [init("wq", q), init("ws", (np.abs(randn(n, nb)) * 0.01).astype(np.float32))],
              opset=21)
    check(m, randn(3, k), "INT8 blocked axis 1 through Gemm transB")
    # per-tensor and per-axis INT4 at opset 21
    q = RNG.integers(-8, 8, (k, n))
    m = model([node("DequantizeLinear", ["wq", "ws"], ["w"], axis=1),
               node("MatMul", ["input", "w"], ["output"])], (3, k),
              [int4_init("wq", q), init("ws", (np.abs(randn(n)) * 0.1).astype(np.float32))],
              opset=21)
    check(m, randn(3, k), "INT4 per axis")
    # blocked Q -> DQ of the input itself, to INT4
    x = randn(3, 8, scale=3.0)
    zp = np.zeros((3, 2), np.int64)
    m = model([node("QuantizeLinear", ["input", "s", "z"], ["q"], axis=1, block_size=4),
               node("DequantizeLinear", ["q", "s", "z"], ["output"], axis=1, block_size=4)],
              x.shape, [init("s", (np.abs(randn(3, 2)) * 0.3 + 0.1).astype(np.float32)),
                        int4_init("z", zp)], opset=21)
    check(m, x, "QuantizeLinear INT4 blocked round trip")


# ---------------------------------------------------------------- whole models

def mlp(sizes, seed_scale=0.1):
    nodes, inits, prev = [], [], "input"
    for i in range(len(sizes) - 1):
        inits += [init("w%d" % i, randn(sizes[i + 1], sizes[i], scale=seed_scale)),
                  init("b%d" % i, randn(sizes[i + 1], scale=0.1))]
        out = "h%d" % i
        nodes.append(node("Gemm", [prev, "w%d" % i, "b%d" % i], [out], transB=1))
        if i < len(sizes) - 2:
            nodes.append(node("Relu", [out], ["r%d" % i]))
            out = "r%d" % i
        prev = out
    nodes.append(node("Softmax", [prev], ["output"], axis=1))
    return nodes, inits


@case
def test_model_mlp():
    """An MLP 784-300-100-10 (Gemm, Relu, Softmax), ORT with optimisations off and all on"""
    nodes, inits = mlp([784, 300, 100, 10], 0.05)
    m = model(nodes, (32, 784), inits)
    x = RNG.random((32, 784), dtype=np.float32)
    check(m, x, "MLP")
    check(m, x, "MLP (ORT all)", opt="all")


def cnn_model(opset=13):
    """Conv+BN+Relu+MaxPool, Conv+Relu+MaxPool, a Shape/Gather/Unsqueeze/Concat
    chain to flatten, Gemm+Relu, Gemm, LogSoftmax; 1x28x28 input."""
    if opset >= 13:
        unsq = node("Unsqueeze", ["n", "ax0"], ["n1"])
    else:
        unsq = node("Unsqueeze", ["n"], ["n1"], axes=[0])
    nodes = [
        node("Conv", ["input", "c1w", "c1b"], ["c1"], pads=[1, 1, 1, 1]),
        node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"]),
        node("Relu", ["bn"], ["r1"]),
        node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        node("Conv", ["p1", "c2w", "c2b"], ["c2"], pads=[1, 1, 1, 1]),
        node("Relu", ["c2"], ["r2"]),
        node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        node("Shape", ["p2"], ["s"]),
        node("Gather", ["s", "zero"], ["n"], axis=0),
        unsq,
        node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        node("Reshape", ["p2", "shape"], ["flat"]),
        node("Gemm", ["flat", "f1w", "f1b"], ["f1"], transB=1),
        node("Relu", ["f1"], ["r3"]),
        node("Gemm", ["r3", "f2w", "f2b"], ["f2"], transB=1),
        node("LogSoftmax", ["f2"], ["output"], axis=1),
    ]
    inits = [init("c1w", randn(8, 1, 3, 3, scale=0.3)), init("c1b", randn(8, scale=0.1)),
             init("bn_s", randn(8)), init("bn_b", randn(8)), init("bn_m", randn(8, scale=0.1)),
             init("bn_v", (np.abs(randn(8)) + 0.5).astype(np.float32)),
             init("c2w", randn(16, 8, 3, 3, scale=0.1)), init("c2b", randn(16, scale=0.1)),
             init("zero", np.array(0, np.int64)), init("minus1", np.array([-1], np.int64)),
             init("ax0", np.array([0], np.int64)),
             init("f1w", randn(32, 16 * 7 * 7, scale=0.05)), init("f1b", randn(32, scale=0.1)),
             init("f2w", randn(10, 32, scale=0.2)), init("f2b", randn(10, scale=0.1))]
    return model(nodes, (1, 1, 28, 28), inits, opset)


@case
def test_model_cnn():
    """A CNN (Conv+BN+Relu+MaxPool twice, shape-chain flatten, Gemm), opsets 11 and 13, ORT off/all"""
    x = RNG.random((16, 1, 28, 28), dtype=np.float32)
    for opset in (11, 13):
        m = cnn_model(opset)
        check(m, x, "CNN opset %d" % opset)
        check(m, x, "CNN opset %d (ORT all)" % opset, opt="all")


@case
def test_model_shuffled_nodes():
    """A model whose nodes are listed out of order runs the same (sorted once at compile)"""
    m = cnn_model(13)
    nodes = list(m.graph.node)
    RNG.shuffle(nodes)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    check(m, RNG.random((4, 1, 28, 28), dtype=np.float32), "shuffled CNN")


# ---------------------------------------------------------------- the CLI

@case
def test_unsupported_operator():
    """An unsupported op: exit 1 and a message naming the op and the node"""
    need()
    m = model([node("Relu", ["input"], ["a"]), node("Foo", ["a"], ["output"], name="bar")],
              (2, 3))
    d = tempfile.mkdtemp(dir=WORK)
    mp, ip = os.path.join(d, "m.onnx"), os.path.join(d, "x.safetensors")
    onnx.save(m, mp)
    write_input(ip, randn(2, 3))
    p = subprocess.run([h.slimd_bin(), "infer", mp, ip, os.path.join(d, "y.safetensors")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "operator 'Foo' (node 'bar') is not supported by slimd's engine" in p.stderr, p.stderr
    assert not os.path.exists(os.path.join(d, "y.safetensors"))


@case
def test_eval_json():
    """slimd eval: samples, top-1 accuracy against ORT's argmax, seconds, batch"""
    need()
    nodes, inits = mlp([20, 16, 5], 0.3)
    m = model(nodes, (1, 20), inits)
    x = randn(103, 20)
    _, ort = run_both(m, x)
    labels = np.argmax(ort, axis=1)
    labels[:10] = (labels[:10] + 1) % 5                  # 10 wrong on purpose
    d = tempfile.mkdtemp(dir=WORK)
    mp, ip = os.path.join(d, "m.onnx"), os.path.join(d, "x.safetensors")
    onnx.save(m, mp)
    write_input(ip, x, labels=labels)
    p = subprocess.run([h.slimd_bin(), "eval", mp, ip, "--batch", "10", "--repeat", "2"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert list(r.keys()) == ["samples", "accuracy", "seconds", "samples_per_second", "batch"], r
    assert r["samples"] == 103 and r["batch"] == 10, r
    assert abs(r["accuracy"] - 93 / 103) < 1e-7, r
    assert r["seconds"] > 0 and r["samples_per_second"] > 0, r


if __name__ == "__main__":
    h.run(setup=setup)
