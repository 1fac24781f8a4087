"""Modules of the from-scratch framework: explicit forward and backward, no autograd.

Every module has ``forward(*inputs)``, ``backward(*grad_wrt_outputs)`` (returns the gradient with
respect to its input and *accumulates* parameter gradients) and ``param()`` (a list of
``[tensor, gradient]`` pairs, empty for parameterless modules). A parameter's gradient lives in the
parameter tensor's ``.grad`` attribute (the tensors never require grad; ``.grad`` is only a place to
keep the gradient), so ``param()`` pairs, :meth:`Module.parameters` and any optimiser that reads
``p.grad`` all see the same gradient tensor, which backward updates in place.

Modules also carry the conveniences a generic trainer expects: ``__call__`` (= forward),
``parameters()``, ``named_parameters()``, ``state_dict()``/``load_state_dict()``, ``train()``/
``eval()``, ``to(device, dtype)`` and ``zero_grad()``. State-dict keys follow torch.nn's naming, so
a scratch model and its torch.nn twin (see :mod:`n2n_core.scratch.network`) load each other's
state dicts.

Initialisation is torch's default for convolutions (``kaiming_uniform_(a=sqrt(5))``, i.e.
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the weight, and the same bound for the bias), drawn from an
explicit ``torch.Generator``. With ``generator=None`` a fresh generator seeded with 0 is used, so
construction never touches torch's global random state.

Why one long module: it is the framework's whole layer set (the Module base and the seven modules
that implement its contract, each with a hand-written backward), kept beside the base it implements.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping

import torch

from n2n_core.errors import CheckpointError
from n2n_core.scratch import functional as F


def _default_generator(generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        return generator
    fresh = torch.Generator()
    fresh.manual_seed(0)
    return fresh


def _uniform(shape, bound: float, generator: torch.Generator, dtype, device) -> torch.Tensor:
    """U(-bound, bound) drawn on the generator's device, then moved to `device`."""
    tensor = torch.empty(shape, dtype=dtype, device=generator.device)
    tensor.uniform_(-bound, bound, generator=generator)
    return tensor.to(device) if device is not None else tensor


def _accumulate(param: torch.Tensor, grad: torch.Tensor) -> None:
    """param.grad += grad (allocating param.grad when it was set to None)."""
    if param.grad is None:
        param.grad = grad.clone(memory_format=torch.contiguous_format)
    else:
        param.grad.add_(grad)


class Module:
    """Base class: parameters (tensors whose gradient lives in ``.grad``) and child modules."""

    def __init__(self) -> None:
        self._param_names: list[str] = []
        self._children: OrderedDict[str, Module] = OrderedDict()
        self.training = True

    # -- registration --------------------------------------------------------------------------

    def _register_param(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        tensor.grad = torch.zeros_like(tensor)
        setattr(self, name, tensor)
        self._param_names.append(name)
        return tensor

    def _register_child(self, name: str, module: Module) -> Module:
        if not isinstance(module, Module):
            raise TypeError(f"child {name!r} is a {type(module).__name__}, not a scratch Module")
        self._children[name] = module
        return module

    # -- the framework's interface -------------------------------------------------------------

    def forward(self, *inputs: torch.Tensor):
        raise NotImplementedError

    def backward(self, *grad_wrt_outputs: torch.Tensor):
        raise NotImplementedError

    def param(self) -> list[list[torch.Tensor]]:
        """``[tensor, gradient]`` pairs of this module and its children (empty when parameterless)."""
        pairs = []
        for tensor in self.parameters():
            if tensor.grad is None:
                tensor.grad = torch.zeros_like(tensor)
            pairs.append([tensor, tensor.grad])
        return pairs

    def __call__(self, *inputs: torch.Tensor):
        return self.forward(*inputs)

    # -- conveniences for generic trainers -----------------------------------------------------

    def modules(self) -> Iterator[Module]:
        yield self
        for child in self._children.values():
            yield from child.modules()

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
        for name in self._param_names:
            yield prefix + name, getattr(self, name)
        for child_name, child in self._children.items():
            yield from child.named_parameters(prefix + child_name + ".")

    def parameters(self) -> Iterator[torch.Tensor]:
        for _, tensor in self.named_parameters():
            yield tensor

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Reset every parameter gradient (in place, or to None with ``set_to_none``)."""
        for tensor in self.parameters():
            if set_to_none:
                tensor.grad = None
            elif tensor.grad is None:
                tensor.grad = torch.zeros_like(tensor)
            else:
                tensor.grad.zero_()

    def state_dict(self) -> OrderedDict[str, torch.Tensor]:
        """Name -> parameter tensor (the live tensors, as torch.nn returns them)."""
        return OrderedDict(self.named_parameters())

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> None:
        """Copy tensors into the parameters (converting dtype and device); shapes must match.

        With ``strict`` (the default), missing or unexpected keys are a CheckpointError too.
        """
        own = dict(self.named_parameters())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise CheckpointError(
                f"state dict does not match {type(self).__name__}: missing keys {missing}, "
                f"unexpected keys {unexpected}"
            )
        for name, tensor in own.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(tensor.shape):
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise CheckpointError(
                    f"state dict entry {name!r} has shape {got}, the model expects {tuple(tensor.shape)}"
                )
            tensor.copy_(value.detach())

    def train(self, mode: bool = True) -> Module:
        for module in self.modules():
            module.training = bool(mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Module:  # noqa: ARG002
        """A no-op kept for generic trainers (EMA copies): scratch tensors never require grad."""
        return self

    def to(self, device=None, dtype: torch.dtype | None = None) -> Module:
        """Move parameters (and their gradients) in place; ``to(torch.float64)`` also works."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        for module in self.modules():
            for name in module._param_names:
                tensor = getattr(module, name)
                grad = tensor.grad
                tensor.grad = None
                tensor.data = tensor.data.to(device=device, dtype=dtype)
                if grad is not None:
                    tensor.grad = grad.to(device=device, dtype=dtype)
            module._drop_cache()
        return self

    def _drop_cache(self) -> None:
        """Forget what forward kept for backward (overridden by modules that keep something)."""

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={module!r}" for name, module in self._children.items())
        return f"{type(self).__name__}({self.extra_repr()}{inner})"

    def extra_repr(self) -> str:
        return ""


def _missing_forward(module: Module) -> RuntimeError:
    return RuntimeError(f"{type(module).__name__}.backward called without a preceding forward")


# ----------------------------------------------------------------------------------------------
# Convolutions
# ----------------------------------------------------------------------------------------------


class Conv2d(Module):
    """2-D convolution as unfold + one matrix product; weight (C_out, C_in, kh, kw)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device=None,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = F.pair(kernel_size, "kernel_size")
        self.stride = F.pair(stride, "stride")
        self.padding = F.pair(padding, "padding")
        self.dilation = F.pair(dilation, "dilation")
        # Set to False on a first layer whose input gradient nobody needs: backward then skips
        # the fold and returns None (what autograd does for an input that does not require grad).
        self.need_input_grad = True
        generator = _default_generator(generator)
        kh, kw = self.kernel_size
        bound = 1.0 / math.sqrt(self.in_channels * kh * kw)
        self._register_param(
            "weight", _uniform((self.out_channels, self.in_channels, kh, kw), bound, generator, dtype, device)
        )
        if bias:
            self._register_param("bias", _uniform((self.out_channels,), bound, generator, dtype, device))
        else:
            self.bias = None
        self._cache = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, self._cache = F.conv2d_forward(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
        return out

    def backward(self, grad_out: torch.Tensor) -> torch.Tensor | None:
        if self._cache is None:
            raise _missing_forward(self)
        grad_in, grad_w, grad_b = F.conv2d_backward(grad_out, self._cache, self.need_input_grad)
        self._cache = None
        _accumulate(self.weight, grad_w)
        if grad_b is not None:
            _accumulate(self.bias, grad_b)
        return grad_in

    def _drop_cache(self) -> None:
        self._cache = None

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"bias={self.bias is not None}"
        )


class ConvTranspose2d(Module):
    """2-D transposed convolution (torch semantics); weight (C_in, C_out, kh, kw)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        output_padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device=None,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = F.pair(kernel_size, "kernel_size")
        self.stride = F.pair(stride, "stride")
        self.padding = F.pair(padding, "padding")
        self.output_padding = F.pair(output_padding, "output_padding")
        self.dilation = F.pair(dilation, "dilation")
        for axis in range(2):
            if self.output_padding[axis] >= max(self.stride[axis], self.dilation[axis]):
                raise ValueError("ConvTranspose2d: output_padding must be smaller than stride or dilation")
        self.need_input_grad = True
        generator = _default_generator(generator)
        kh, kw = self.kernel_size
        # torch computes fan_in from weight.size(1) = out_channels for transposed convolutions
        bound = 1.0 / math.sqrt(self.out_channels * kh * kw)
        self._register_param(
            "weight", _uniform((self.in_channels, self.out_channels, kh, kw), bound, generator, dtype, device)
        )
        if bias:
            self._register_param("bias", _uniform((self.out_channels,), bound, generator, dtype, device))
        else:
            self.bias = None
        self._cache = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, self._cache = F.conv_transpose2d_forward(
            x, self.weight, self.bias, self.stride, self.padding, self.output_padding, self.dilation
        )
        return out

    def backward(self, grad_out: torch.Tensor) -> torch.Tensor | None:
        if self._cache is None:
            raise _missing_forward(self)
        grad_in, grad_w, grad_b = F.conv_transpose2d_backward(grad_out, self._cache, self.need_input_grad)
        self._cache = None
        _accumulate(self.weight, grad_w)
        if grad_b is not None:
            _accumulate(self.bias, grad_b)
        return grad_in

    def _drop_cache(self) -> None:
        self._cache = None

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, output_padding={self.output_padding}, "
            f"dilation={self.dilation}, bias={self.bias is not None}"
        )


# ----------------------------------------------------------------------------------------------
# Upsampling
# ----------------------------------------------------------------------------------------------


class Upsampling(Module):
    """Nearest upsampling by ``scale`` then a stride-1 "same" convolution (docs/methods.md section 10).

    The convolution is the child named "1", as in ``torch.nn.Sequential(nn.Upsample(...),
    nn.Conv2d(...))`` (whose "0" has no parameters), so state dicts match that twin. The
    upsampled image is never built: each of the scale² output phases is a convolution of the small
    image with summed taps (see :func:`functional.upsample_conv2d_forward`), the same linear map as
    upsample-then-convolve up to the order of floating-point additions.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        scale: int | tuple[int, int] = 2,
        kernel_size: int | tuple[int, int] = 3,
        padding: int | tuple[int, int] = 1,
        bias: bool = True,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device=None,
    ) -> None:
        super().__init__()
        self.scale = F.pair(scale, "scale")
        if min(self.scale) < 1:
            raise ValueError(f"Upsampling scale must be a positive integer, got {scale!r}")
        self.conv = self._register_child(
            "1", Conv2d(in_channels, out_channels, kernel_size, 1, padding, 1, bias,
                        generator=generator, dtype=dtype, device=device),
        )
        if not F.fused_upsample_conv_supported(self.scale, self.conv.kernel_size, self.conv.padding):
            raise ValueError("Upsampling needs a 'same' convolution: 2·padding = kernel_size - 1")
        self._cache = None

    @property
    def need_input_grad(self) -> bool:
        return self.conv.need_input_grad

    @need_input_grad.setter
    def need_input_grad(self, value: bool) -> None:
        self.conv.need_input_grad = bool(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, self._cache = F.upsample_conv2d_forward(x, self.conv.weight, self.conv.bias, self.scale,
                                                     self.conv.padding)
        return out

    def backward(self, grad_out: torch.Tensor) -> torch.Tensor | None:
        if self._cache is None:
            raise _missing_forward(self)
        grad_in, grad_w, grad_b = F.upsample_conv2d_backward(grad_out, self._cache, self.conv.need_input_grad)
        self._cache = None
        _accumulate(self.conv.weight, grad_w)
        if grad_b is not None:
            _accumulate(self.conv.bias, grad_b)
        return grad_in

    def _drop_cache(self) -> None:
        self._cache = None

    def __repr__(self) -> str:
        return f"Upsampling(scale={self.scale}, conv={self.conv!r})"


# ----------------------------------------------------------------------------------------------
# Activations
# ----------------------------------------------------------------------------------------------


class ReLU(Module):
    """max(x, 0)."""

    def __init__(self) -> None:
        super().__init__()
        self._out = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._out = F.relu_forward(x)
        return self._out

    def backward(self, grad_out: torch.Tensor) -> torch.Tensor:
        if self._out is None:
            raise _missing_forward(self)
        grad = F.relu_backward(grad_out, self._out)
        self._out = None
        return grad

    def _drop_cache(self) -> None:
        self._out = None


class Sigmoid(Module):
    """1 / (1 + exp(-x))."""

    def __init__(self) -> None:
        super().__init__()
        self._out = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._out = F.sigmoid_forward(x)
        return self._out

    def backward(self, grad_out: torch.Tensor) -> torch.Tensor:
        if self._out is None:
            raise _missing_forward(self)
        grad = F.sigmoid_backward(grad_out, self._out)
        self._out = None
        return grad

    def _drop_cache(self) -> None:
        self._out = None


# ----------------------------------------------------------------------------------------------
# Containers and loss
# ----------------------------------------------------------------------------------------------


class Sequential(Module):
    """Modules applied in order; backward runs them in reverse. Children are named "0", "1", ..."""

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        for index, module in enumerate(modules):
            self._register_child(str(index), module)

    def __getitem__(self, index: int) -> Module:
        return list(self._children.values())[index]

    def __len__(self) -> int:
        return len(self._children)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._children.values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self._children.values():
            x = module.forward(x)
        return x

    def backward(self, grad_out: torch.Tensor) -> torch.Tensor | None:
        modules = list(self._children.values())
        grad = grad_out
        for position in range(len(modules) - 1, -1, -1):
            grad = modules[position].backward(grad)
            if grad is None and position > 0:
                raise RuntimeError(
                    f"module {position} ({type(modules[position]).__name__}) returned no input "
                    "gradient but earlier modules need one; set need_input_grad=True on it"
                )
        return grad


class MSE(Module):
    """Mean squared error loss: ``forward(pred, target)`` -> 0-d tensor; ``backward()`` -> dL/dpred."""

    def __init__(self) -> None:
        super().__init__()
        self._saved = None

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self._saved = (pred, target)
        return F.mse_forward(pred, target)

    def backward(self, grad_out: torch.Tensor | float = 1.0) -> torch.Tensor:
        if self._saved is None:
            raise _missing_forward(self)
        pred, target = self._saved
        self._saved = None
        return F.mse_backward(pred, target, grad_out)

    def _drop_cache(self) -> None:
        self._saved = None
