"""Tests for the from-scratch framework (docs/methods.md section 10, n2n_core/scratch).

Every forward and every gradient is checked against torch autograd in float64 (relative error
<= 1e-10) over strides 1-3, paddings 0-2 and dilations 1-2; then SGD against torch.optim.SGD,
pickle-free weight files, the no-autograd / no-torch.nn rules, both course networks against their
torch.nn twins, and short training runs of both.
"""

from __future__ import annotations

import ast
import itertools
import math
import pickle
from pathlib import Path

import pytest
import torch

import n2n_core.scratch as scratch
from n2n_core.errors import CheckpointError
from n2n_core.scratch import functional as SF

TF = torch.nn.functional  # the reference (tests only; the framework never uses torch.nn)
F64 = torch.float64
TOL = 1e-10
SCRATCH_DIR = Path(scratch.__file__).resolve().parent
NETWORKS = {"nearest": (scratch.course_network, scratch.course_network_torch),
            "tconv": (scratch.tconv_network, scratch.tconv_network_torch)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: one intra-op thread avoids thread hand-offs (slow on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach(), expected.detach()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = expected.abs().max().clamp_min(1e-300)
    return float((actual - expected).abs().max() / scale)


def assert_close(actual, expected, what: str = "") -> None:
    err = rel_err(actual, expected)
    assert err <= TOL, f"{what}: relative error {err:.3e} > {TOL}"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=F64)


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.clone().requires_grad_(True)


def check_module(module, torch_fn, x: torch.Tensor, params: dict[str, torch.Tensor], seed: int, what: str):
    """Forward, input gradient and parameter gradients of `module` against autograd on `torch_fn`."""
    ref_x = leaf(x)
    ref_params = {name: leaf(value) for name, value in params.items()}
    ref_out = torch_fn(ref_x, **ref_params)
    grad_out = randn(*ref_out.shape, seed=seed + 1000)
    ref_out.backward(grad_out)
    module.zero_grad()
    out = module.forward(x)
    assert_close(out, ref_out, f"{what} forward")
    grad_in = module.backward(grad_out)
    assert_close(grad_in, ref_x.grad, f"{what} input grad")
    named = dict(module.named_parameters())
    for name, ref_param in ref_params.items():
        assert_close(named[name].grad, ref_param.grad, f"{what} grad of {name}")
    return out


# --------------------------------------------------------------------------------------------
# Convolutions
# --------------------------------------------------------------------------------------------


def test_conv2d_matches_autograd_over_strides_paddings_dilations():
    g = gen(1)
    for case, (stride, padding, dilation) in enumerate(itertools.product((1, 2, 3), (0, 1, 2), (1, 2))):
        kh, kw = (int(k) for k in torch.randint(1, 4, (2,), generator=g))
        c_in, c_out, batch = (int(v) for v in torch.randint(1, 5, (3,), generator=g))
        height = dilation * (kh - 1) + 1 + int(torch.randint(0, 7, (1,), generator=g))
        width = dilation * (kw - 1) + 1 + int(torch.randint(0, 7, (1,), generator=g))
        bias = case % 3 != 2
        conv = scratch.Conv2d(
            c_in, c_out, (kh, kw), stride, padding, dilation, bias,
            generator=gen(case), dtype=F64,
        )
        params = {"weight": conv.weight.clone()}
        if bias:
            params["bias"] = conv.bias.clone()

        def reference(x, weight, bias=None):
            return TF.conv2d(x, weight, bias, stride, padding, dilation)

        x = randn(batch, c_in, height, width, seed=case)
        check_module(conv, reference, x, params, case, f"conv s{stride} p{padding} d{dilation} k{kh}x{kw}")
        assert conv.bias is None if not bias else conv.bias.grad is not None


def test_conv_transpose2d_matches_autograd():
    g = gen(2)
    for case, (stride, padding, dilation) in enumerate(itertools.product((1, 2, 3), (0, 1, 2), (1, 2))):
        kh, kw = (int(k) for k in torch.randint(1, 4, (2,), generator=g))
        c_in, c_out, batch = (int(v) for v in torch.randint(1, 5, (3,), generator=g))
        # every allowed output_padding, including >= stride (only possible with dilation)
        output_padding = case % max(stride, dilation)
        height, width = (int(v) for v in torch.randint(1, 6, (2,), generator=g))
        out_h = (height - 1) * stride - 2 * padding + dilation * (kh - 1) + output_padding + 1
        out_w = (width - 1) * stride - 2 * padding + dilation * (kw - 1) + output_padding + 1
        if out_h <= 0 or out_w <= 0:
            height, width = height + 3, width + 3
        bias = case % 3 != 1
        conv = scratch.ConvTranspose2d(
            c_in, c_out, (kh, kw), stride, padding, output_padding, dilation, bias,
            generator=gen(case), dtype=F64,
        )
        params = {"weight": conv.weight.clone()}
        if bias:
            params["bias"] = conv.bias.clone()

        def reference(x, weight, bias=None):
            return TF.conv_transpose2d(x, weight, bias, stride, padding, output_padding, 1, dilation)

        x = randn(batch, c_in, height, width, seed=100 + case)
        check_module(
            conv, reference, x, params, 100 + case,
            f"convT s{stride} p{padding} op{output_padding} d{dilation} k{kh}x{kw}",
        )


def test_output_padding_beyond_stride_with_dilation():
    """stride 1, dilation 2, output_padding 1: the output has more windows than the input pixels."""
    conv = scratch.ConvTranspose2d(2, 3, 3, 1, 1, 1, 2, generator=gen(0), dtype=F64)
    params = {"weight": conv.weight.clone(), "bias": conv.bias.clone()}
    check_module(
        conv, lambda x, weight, bias: TF.conv_transpose2d(x, weight, bias, 1, 1, 1, 1, 2),
        randn(2, 2, 5, 4, seed=3), params, 3, "convT op>=s",
    )


def test_strided_columns_are_unfolds_columns():
    """im2col is torch's unfold transposed (column order kh, kw, C); col2im is fold."""
    x = randn(2, 3, 9, 7, seed=4)
    kernel, stride, padding, dilation = (3, 2), (2, 1), (1, 2), (2, 1)
    cols, (h_out, w_out) = SF.im2col(x, kernel, stride, padding, dilation)
    ref = TF.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (B, C·kh·kw, L)
    ref = ref.view(2, 3, 3, 2, h_out * w_out).permute(0, 4, 2, 3, 1).reshape(cols.shape)
    assert torch.equal(cols, ref)
    folded = SF.col2im(cols, 2, 3, (9, 7), kernel, stride, padding, dilation, (h_out, w_out))
    ref_cols = TF.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    assert_close(folded, TF.fold(ref_cols, (9, 7), kernel, dilation=dilation, padding=padding, stride=stride))


@pytest.mark.parametrize("layer", ["conv", "convT", "upsampling"])
def test_layers_skip_the_input_gradient_when_told(layer):
    make = {"conv": lambda: scratch.Conv2d(4, 5, 3, 2, 1, generator=gen(1), dtype=F64),
            "convT": lambda: scratch.ConvTranspose2d(4, 5, 3, 2, 1, 1, generator=gen(1), dtype=F64),
            "upsampling": lambda: scratch.Upsampling(4, 5, generator=gen(1), dtype=F64)}[layer]
    x = randn(3, 4, 6, 6, seed=5)
    full, lean = make(), make()
    out = full.forward(x)
    assert_close(lean.forward(x), out)
    grad = randn(*out.shape, seed=6)
    assert full.backward(grad) is not None
    lean.need_input_grad = False
    assert lean.backward(grad) is None
    assert_close(lean.weight.grad if layer != "upsampling" else lean.conv.weight.grad,
                 full.weight.grad if layer != "upsampling" else full.conv.weight.grad)


def test_conv_errors():
    with pytest.raises(ValueError):
        scratch.ConvTranspose2d(3, 4, 3, stride=2, output_padding=2)
    with pytest.raises(ValueError):
        scratch.Upsampling(3, 4, 2, kernel_size=3, padding=0)  # not a "same" convolution
    conv = scratch.Conv2d(3, 4, 3, dtype=F64)
    with pytest.raises(ValueError):
        conv.forward(randn(1, 2, 8, 8, seed=0))  # wrong channel count
    with pytest.raises(RuntimeError):
        scratch.Conv2d(3, 4, 3).backward(torch.zeros(1, 4, 6, 6))  # no forward first


# --------------------------------------------------------------------------------------------
# Upsampling
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale,kernel,padding", [(2, 3, 1), (3, 3, 1), (2, 5, 2), (2, 1, 0), ((2, 3), 3, 1)])
def test_upsampling_is_nearest_then_conv(scale, kernel, padding):
    up = scratch.Upsampling(3, 4, scale, kernel, padding, generator=gen(8), dtype=F64)
    factor = scale if isinstance(scale, tuple) else (scale, scale)

    def reference(x, **w):
        upsampled = TF.interpolate(x, scale_factor=factor, mode="nearest")
        return TF.conv2d(upsampled, w["1.weight"], w["1.bias"], 1, padding)

    params = {"1.weight": up.conv.weight.clone(), "1.bias": up.conv.bias.clone()}
    check_module(up, reference, randn(2, 3, 5, 4, seed=9), params, 9, f"upsampling {scale} k{kernel}")


# --------------------------------------------------------------------------------------------
# Activations, loss, Sequential
# --------------------------------------------------------------------------------------------


def _with_zeros(seed: int) -> torch.Tensor:
    x = randn(3, 4, 5, 6, seed=seed)
    x.view(-1)[::7] = 0.0  # exact zeros: the kink of relu / leaky relu
    return x


@pytest.mark.parametrize(
    "module,reference",
    [
        (scratch.ReLU(), torch.relu),
        (scratch.Sigmoid(), torch.sigmoid),
    ],
    ids=["relu", "sigmoid"],
)
def test_activations(module, reference):
    x = _with_zeros(10)
    check_module(module, reference, x.clone(), {}, 10, type(module).__name__)
    assert module.param() == []


def test_mse():
    pred, target = randn(4, 3, 5, 5, seed=11), randn(4, 3, 5, 5, seed=12)
    ref_pred = leaf(pred)
    ref = TF.mse_loss(ref_pred, target)
    ref.backward()
    loss = scratch.MSE()
    assert_close(loss.forward(pred, target), ref)
    assert_close(loss.backward(), ref_pred.grad)
    # a scaled upstream gradient
    loss.forward(pred, target)
    assert_close(loss.backward(2.5), 2.5 * ref_pred.grad)
    with pytest.raises(ValueError):
        scratch.MSE().forward(pred, target[:, :2])


def test_sequential_backward_chain():
    net = scratch.Sequential(
        scratch.Conv2d(3, 5, 3, stride=2, padding=1, generator=gen(1), dtype=F64),
        scratch.ReLU(),
        scratch.ConvTranspose2d(5, 4, 3, stride=2, padding=1, output_padding=1, generator=gen(2), dtype=F64),
        scratch.ReLU(),
        scratch.Upsampling(4, 4, generator=gen(3), dtype=F64),
        scratch.Conv2d(4, 3, 3, padding=2, dilation=2, generator=gen(4), dtype=F64),
        scratch.Sigmoid(),
    )
    weights = {name: p.clone() for name, p in net.named_parameters()}

    def reference(x, **w):
        h = torch.relu(TF.conv2d(x, w["0.weight"], w["0.bias"], 2, 1))
        h = torch.relu(TF.conv_transpose2d(h, w["2.weight"], w["2.bias"], 2, 1, 1))
        h = TF.conv2d(TF.interpolate(h, scale_factor=2, mode="nearest"), w["4.1.weight"], w["4.1.bias"], 1, 1)
        return torch.sigmoid(TF.conv2d(h, w["5.weight"], w["5.bias"], 1, 2, 2))

    check_module(net, reference, randn(2, 3, 8, 6, seed=13), weights, 13, "sequential")
    assert len(net.param()) == 8 and len(net) == 7


def test_param_pairs_accumulate_and_zero_grad():
    conv = scratch.Conv2d(2, 3, 3, padding=1, generator=gen(0), dtype=F64)
    pairs = conv.param()
    assert [p for p, _ in pairs] == [conv.weight, conv.bias]
    assert all(g is p.grad for p, g in pairs)
    x, grad = randn(1, 2, 5, 5, seed=1), randn(1, 3, 5, 5, seed=2)
    conv.forward(x)
    conv.backward(grad)
    first = conv.weight.grad.clone()
    conv.forward(x)
    conv.backward(grad)
    assert_close(conv.weight.grad, 2 * first)  # accumulated, in the same tensor
    assert pairs[0][1] is conv.weight.grad
    conv.zero_grad()
    assert float(conv.weight.grad.abs().max()) == 0.0 and pairs[0][1] is conv.weight.grad
    conv.zero_grad(set_to_none=True)
    assert conv.weight.grad is None
    conv.forward(x)
    conv.backward(grad)
    assert_close(conv.weight.grad, first)


# --------------------------------------------------------------------------------------------
# Initialisation and module conveniences
# --------------------------------------------------------------------------------------------


def test_init_is_torch_default_uniform_from_explicit_generator():
    state = torch.get_rng_state()
    conv = scratch.Conv2d(16, 8, 3, generator=gen(5))
    convt = scratch.ConvTranspose2d(16, 8, 3)
    assert torch.equal(torch.get_rng_state(), state), "construction touched the global RNG"
    bound = 1 / (16 * 9) ** 0.5
    assert float(conv.weight.abs().max()) <= bound and float(conv.bias.abs().max()) <= bound
    assert float(conv.weight.abs().max()) > 0.9 * bound  # spread over the whole interval
    assert float(convt.weight.abs().max()) <= 1 / (8 * 9) ** 0.5  # torch: fan_in from weight.size(1)
    assert float(conv.weight.std()) == pytest.approx(bound / 3**0.5, rel=0.1)
    again = scratch.Conv2d(16, 8, 3, generator=gen(5))
    assert torch.equal(conv.weight, again.weight) and torch.equal(conv.bias, again.bias)
    other = scratch.Conv2d(16, 8, 3, generator=gen(6))
    assert not torch.equal(conv.weight, other.weight)


def test_module_conveniences():
    net = scratch.course_network(24, generator=gen(0))
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    assert net.training and not net.eval().training and net.train().training
    assert all(not m.training for m in net.eval().modules())
    net.train()
    names = list(net.state_dict())
    assert names == [
        "0.weight", "0.bias", "2.weight", "2.bias", "4.1.weight", "4.1.bias", "6.1.weight", "6.1.bias"
    ]
    assert len(list(net.parameters())) == 8
    net.to(torch.float64)
    assert all(p.dtype == F64 and p.grad.dtype == F64 for p in net.parameters())
    assert net(torch.rand(1, 3, 32, 32, dtype=F64)).dtype == F64
    net.to("cpu", torch.float32)
    with pytest.raises(CheckpointError):
        net.load_state_dict({"0.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError):
        net.load_state_dict({**net.state_dict(), "0.weight": torch.zeros(3, 3)})


# --------------------------------------------------------------------------------------------
# SGD
# --------------------------------------------------------------------------------------------


SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3),
    dict(lr=0.05, momentum=0.8, nesterov=True),
    dict(lr=0.02, momentum=0.5, dampening=0.1, weight_decay=0.01),
    dict(lr=0.01, weight_decay=0.1, maximize=True),
]


@pytest.mark.parametrize("config", SGD_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_sgd_matches_torch_optim(config):
    shapes = [(4, 3, 3, 3), (4,), (2, 5)]
    ours = [randn(*s, seed=i) for i, s in enumerate(shapes)]
    theirs = [leaf(t) for t in ours]
    mine = scratch.SGD([[p, torch.zeros_like(p)] for p in ours], **config)
    ref = torch.optim.SGD(theirs, **config)
    for step in range(6):
        if step == 3:  # an external scheduler changes the learning rate
            for group in mine.param_groups + ref.param_groups:
                group["lr"] = group["lr"] * 0.5
        for i, (a, b) in enumerate(zip(ours, theirs)):
            grad = randn(*a.shape, seed=100 * step + i)
            a.grad.copy_(grad)
            b.grad = grad.clone()
        mine.step()
        ref.step()
        for a, b in zip(ours, theirs):
            assert_close(a, b, f"step {step}")
    # checkpoint round trip: a fresh optimiser continues identically
    resumed_params = [p.clone() for p in ours]
    for p, q in zip(resumed_params, ours):
        p.grad = q.grad.clone()
    resumed = scratch.SGD(resumed_params, **config)
    resumed.load_state_dict(mine.state_dict())
    mine.step()
    resumed.step()
    for a, b in zip(ours, resumed_params):
        assert torch.equal(a, b)


def test_sgd_zero_grad_param_groups_and_errors():
    model = scratch.Conv2d(2, 2, 1, generator=gen(0), dtype=F64)
    opt = scratch.SGD(model.param(), lr=0.1)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["params"] == [model.weight, model.bias]
    model.weight.grad.fill_(1.0)
    opt.zero_grad()
    assert float(model.weight.grad.abs().max()) == 0.0
    groups = scratch.SGD([{"params": [model.weight], "lr": 0.5}, {"params": [model.bias]}], lr=0.1)
    assert [g["lr"] for g in groups.param_groups] == [0.5, 0.1]
    with pytest.raises(ValueError):
        scratch.SGD(model.parameters(), lr=0.1, momentum=0.0, nesterov=True)
    with pytest.raises(ValueError):
        scratch.SGD(model.parameters(), lr=-1)
    with pytest.raises(CheckpointError):
        scratch.SGD(model.parameters(), lr=0.1).load_state_dict({"param_groups": [], "state": {}})


# --------------------------------------------------------------------------------------------
# Serialization
# --------------------------------------------------------------------------------------------


class _Exploit:
    """Unpickling this would create a marker file: a stand-in for arbitrary code execution."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_save_load_round_trip(tmp_path):
    net = scratch.course_network(48, generator=gen(1))
    path = scratch.save(net, tmp_path / "sub" / "weights.bin")
    assert path.exists() and [p.name for p in path.parent.iterdir()] == ["weights.bin"]  # no temp left
    other = scratch.course_network(48, generator=gen(2))
    assert not torch.equal(other[0].weight, net[0].weight)
    scratch.load(other, path)
    for (name, a), (_, b) in zip(net.named_parameters(), other.named_parameters()):
        assert torch.equal(a, b), name
    # dtypes survive in the raw state; overwriting is atomic (os.replace) and allowed
    state = {"a": torch.arange(6, dtype=torch.int64).view(2, 3), "b": torch.rand(3, dtype=F64),
             "c": torch.tensor([True, False]), "d": torch.rand(2, 2).to(torch.bfloat16), "e": torch.zeros(0)}
    scratch.save_state(state, path)
    loaded = scratch.load_state(path)
    assert list(loaded) == list(state)
    for key in state:
        assert loaded[key].dtype == state[key].dtype and torch.equal(loaded[key], state[key])
    # the torch.nn twin reads the same file
    twin = scratch.course_network_torch(48)
    scratch.load(twin, scratch.save(net, path))
    assert torch.equal(twin[0].weight.detach(), net[0].weight)


def test_load_refuses_pickles_without_running_them(tmp_path):
    marker = tmp_path / "pwned"
    net = scratch.course_network(24, generator=gen(0))
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"0.weight": _Exploit(str(marker))}))
    torch_file = tmp_path / "torch.pt"
    torch.save({"0.weight": _Exploit(str(marker))}, torch_file)
    for path in (plain, torch_file):
        with pytest.raises(CheckpointError):
            scratch.load(net, path)
        with pytest.raises(CheckpointError):
            scratch.load_state(path)
    assert not marker.exists()
    # truncated and corrupt files, and missing ones
    good = scratch.save(net, tmp_path / "good.bin")
    raw = good.read_bytes()
    for index, bad in enumerate((raw[:-4], raw[:5], b"\xff" * 64, raw[:8] + b"x" + raw[9:])):
        path = tmp_path / f"bad{index}.bin"
        path.write_bytes(bad)
        with pytest.raises(CheckpointError):
            scratch.load_state(path)
    with pytest.raises(CheckpointError):
        scratch.load_state(tmp_path / "missing.bin")
    # a file for another architecture
    with pytest.raises(CheckpointError):
        scratch.load(scratch.course_network(48), good)


def test_serialization_uses_no_pickle_module():
    tree = ast.parse((SCRATCH_DIR / "serialization.py").read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
             for alias in node.names}
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not ({"pickle", "dill", "cloudpickle", "marshal", "numpy"} & (names | modules))
    calls = {_dotted(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    assert not {"torch.load", "pickle.load", "pickle.loads", "np.load", "numpy.load"} & calls


# --------------------------------------------------------------------------------------------
# The framework's rules: no autograd, no torch.nn beyond fold/unfold
# --------------------------------------------------------------------------------------------


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


# network.py builds the torch.nn *twins* (reference implementations for comparisons); it may import
# torch.nn inside that function only. Nothing else in the package may touch torch.nn or autograd.
_TWIN = ("network.py", "_torch_twin")
_FORBIDDEN = ("torch.nn", "torch.autograd")


def _rule_offences(source: str, filename: str) -> list[str]:
    """Imports or uses of torch.nn (torch.nn.functional included) or of autograd."""
    tree = ast.parse(source)
    twin_spans = [
        (node.lineno, node.end_lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and (filename, node.name) == _TWIN
    ]

    def in_twin(node: ast.AST) -> bool:
        return any(a <= node.lineno <= b for a, b in twin_spans)

    offences = []
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and node.module:
            mod, names = node.module, [a.name for a in node.names]
            if mod == "torch" and {"nn", "autograd"} & set(names) and not in_twin(node):
                offences.append(f"{where} imports {names} from torch")
            elif mod.startswith(_FORBIDDEN) and not in_twin(node):
                offences.append(f"{where} imports from {mod}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(_FORBIDDEN) and not in_twin(node):
                    offences.append(f"{where} imports {alias.name}")
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted and dotted.startswith(_FORBIDDEN) and not in_twin(node):
                offences.append(f"{where} uses {dotted}")
            if node.attr in ("requires_grad_", "grad_fn", "retain_grad"):
                offences.append(f"{where} uses .{node.attr}")
        elif isinstance(node, ast.keyword) and node.arg == "requires_grad":
            offences.append(f"{where} passes requires_grad")
    return offences


def test_no_torch_nn_and_no_autograd():
    files = sorted(SCRATCH_DIR.glob("*.py"))
    assert {f.name for f in files} == {
        "__init__.py", "functional.py", "layers.py", "optim.py", "network.py", "serialization.py"
    }
    offences = [o for path in files for o in _rule_offences(path.read_text(), path.name)]
    assert not offences, offences


@pytest.mark.parametrize(
    "source",
    [
        "import torch.nn as nn",
        "import torch.nn.functional as F",
        "from torch import nn",
        "from torch.nn import Conv2d",
        "from torch.nn.functional import conv2d, unfold",
        "from torch.nn.functional import fold, unfold",
        "import torch\ny = torch.nn.functional.conv2d",
        "import torch\ntorch.autograd.grad",
        "x.requires_grad_(True)",
        "torch.zeros(1, requires_grad=True)",
        "def _torch_twin():\n    pass\nfrom torch import nn",
    ],
)
def test_the_rule_checker_catches_violations(source):
    assert _rule_offences(source, "network.py")


def sgd_step(model, optimizer, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """One step as the course method takes it: no autograd, the hand-written backward, SGD."""
    with torch.no_grad():
        optimizer.zero_grad()
        mse = scratch.MSE()
        loss = mse.forward(model(inputs), targets)
        model.backward(mse.backward())
        optimizer.step()
        return float(loss)


def test_a_training_step_needs_no_autograd():
    """Forward and backward run with grad mode off, and nothing they make has a graph."""
    seen = []

    class Probe(scratch.Module):
        def forward(self, x):
            seen.append(("forward", torch.is_grad_enabled()))
            return x

        def backward(self, grad):
            seen.append(("backward", torch.is_grad_enabled()))
            return grad

    net = scratch.course_network(24, generator=gen(0))
    model = scratch.Sequential(Probe(), *net)
    opt = scratch.SGD(model.param(), lr=0.5, momentum=0.9)
    x = torch.rand(4, 3, 32, 32, generator=gen(1))
    assert torch.is_grad_enabled()
    assert isinstance(sgd_step(model, opt, x, x), float)
    assert seen == [("forward", False), ("backward", False)]
    out = model(x)
    for p in model.parameters():
        assert not p.requires_grad and p.grad_fn is None and p.grad is not None
    assert out.grad_fn is None and not out.requires_grad


# --------------------------------------------------------------------------------------------
# The course networks: nearest upsampling (reports A, C, E) and transposed convolutions (report E)
# --------------------------------------------------------------------------------------------


def _upsampling_weight(net, twin, kind: str):
    if kind == "tconv":
        return net[4].weight, twin[4].weight.detach()
    return net[4].conv.weight, twin[4][1].weight.detach()


@pytest.mark.parametrize("channels", [24, 48])
@pytest.mark.parametrize("kind", NETWORKS)
def test_course_networks_match_their_torch_twins(kind, channels):
    build, build_twin = NETWORKS[kind]
    state = torch.get_rng_state()
    net = build(channels, generator=gen(3)).to(F64)
    twin = build_twin(channels, generator=gen(3)).to(F64)
    assert torch.equal(torch.get_rng_state(), state)
    for (name, p), (twin_name, q) in zip(net.named_parameters(), twin.named_parameters(), strict=True):
        assert name == twin_name and torch.equal(p, q.detach()), name  # same init, same names
    x, y = torch.rand(3, 3, 32, 32, generator=gen(4), dtype=F64), torch.rand(3, 3, 32, 32, generator=gen(5), dtype=F64)
    twin_out = twin(x)
    ref = TF.mse_loss(twin_out, y)
    ref.backward()
    mse = scratch.MSE()
    out = net(x)
    assert out.shape == (3, 3, 32, 32)
    assert_close(out, twin_out, "forward")
    assert_close(mse.forward(out, y), ref)
    net.backward(mse.backward())
    for (name, p), q in zip(net.named_parameters(), twin.parameters()):
        assert_close(p.grad, q.grad, name)
    # and back: weights changed in torch flow into the scratch net
    with torch.no_grad():
        for q in twin.parameters():
            q.mul_(0.5)
    scratch.copy_weights(twin, net)
    ours, theirs = _upsampling_weight(net, twin, kind)
    assert torch.equal(ours, theirs)


def test_the_tconv_network_matches_its_twin_in_float32():
    net, twin = scratch.tconv_network(24, generator=gen(9)), scratch.tconv_network_torch(24, generator=gen(9))
    x, y = torch.rand(4, 3, 32, 32, generator=gen(10)), torch.rand(4, 3, 32, 32, generator=gen(11))
    ref = TF.mse_loss(twin(x), y)
    ref.backward()
    mse = scratch.MSE()
    torch.testing.assert_close(mse.forward(net(x), y), ref.detach(), rtol=1e-5, atol=0)
    net.backward(mse.backward())
    for (name, p), q in zip(net.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6 * float(q.grad.abs().max()), msg=name)


@pytest.mark.parametrize("kind", NETWORKS)
def test_course_network_training_reduces_loss(kind):
    g = gen(7)
    net = NETWORKS[kind][0](24, generator=g)
    opt = scratch.SGD(net.param(), lr=1.0, momentum=0.5)
    # bright blocky images (the untrained net outputs ~0.5 everywhere) and a noisy copy
    clean = 0.55 + 0.4 * torch.rand(8, 3, 4, 4, generator=g).repeat_interleave(8, 2).repeat_interleave(8, 3)
    noisy = (clean + 0.1 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    losses = [sgd_step(net, opt, noisy, clean) for _ in range(25)]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0], losses
