"""SGD with torch.optim.SGD's update rule, for the from-scratch framework (no autograd needed).

The update, per parameter p with gradient g (exactly torch.optim.SGD's, in the same order of
operations, so float64 trajectories agree to the last bits):

    g = -g                            if maximize
    g = g + weight_decay * p          if weight_decay != 0
    if momentum != 0:
        b = g (first step)  or  b = momentum * b + (1 - dampening) * g
        g = g + momentum * b          if nesterov   else   g = b
    p = p - lr * g

``param_groups`` is a list of dicts holding "params" and the hyper-parameters, read afresh at
every step, so an external scheduler can change ``group["lr"]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from n2n_core.errors import CheckpointError

_DEFAULTS_KEYS = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")


def _as_tensor_list(params: Any) -> list[torch.Tensor]:
    """Tensors from an iterable of tensors or of [tensor, gradient] pairs (module.param())."""
    tensors = []
    for item in params:
        if isinstance(item, torch.Tensor):
            tensor = item
        elif isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], torch.Tensor):
            tensor, grad = item
            if grad is not None and tensor.grad is not grad:
                if tuple(grad.shape) != tuple(tensor.shape):
                    raise ValueError("a [tensor, gradient] pair has a gradient of another shape")
                tensor.grad = grad  # keep the pair's gradient where the optimiser reads it
        else:
            raise TypeError(
                "SGD params must be tensors, [tensor, gradient] pairs or param-group dicts, "
                f"got {type(item).__name__}"
            )
        tensors.append(tensor)
    return tensors


class SGD:
    """Stochastic gradient descent matching ``torch.optim.SGD`` (no autograd needed).

    ``params``: an iterable of tensors, of ``[tensor, gradient]`` pairs (``module.param()``), or
    of param-group dicts (``{"params": [...], "lr": ...}``). Gradients are read from ``p.grad``
    (where the scratch modules accumulate them); parameters whose ``.grad`` is None are skipped.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        if lr < 0:
            raise ValueError(f"invalid learning rate: {lr}")
        if momentum < 0:
            raise ValueError(f"invalid momentum: {momentum}")
        if weight_decay < 0:
            raise ValueError(f"invalid weight_decay: {weight_decay}")
        self.defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
        }
        params = list(params)
        if not params:
            raise ValueError("SGD got an empty parameter list")
        groups = params if isinstance(params[0], Mapping) else [{"params": params}]
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[torch.Tensor, dict[str, Any]] = {}
        seen: set[int] = set()
        for group in groups:
            if not isinstance(group, Mapping):
                raise TypeError("SGD param groups must all be dicts when the first one is")
            new_group = dict(group)
            new_group["params"] = _as_tensor_list(group["params"])
            for key, value in self.defaults.items():
                new_group.setdefault(key, value)
            if new_group["nesterov"] and (new_group["momentum"] <= 0 or new_group["dampening"] != 0):
                raise ValueError("Nesterov momentum requires a momentum and zero dampening")
            for tensor in new_group["params"]:
                if id(tensor) in seen:
                    raise ValueError("some parameters appear in more than one parameter group")
                seen.add(id(tensor))
            self.param_groups.append(new_group)

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zero every gradient in place (or set it to None; scratch modules then reallocate it)."""
        for group in self.param_groups:
            for tensor in group["params"]:
                if tensor.grad is None:
                    continue
                if set_to_none:
                    tensor.grad = None
                else:
                    tensor.grad.zero_()

    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        for group in self.param_groups:
            lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
            weight_decay, nesterov, maximize = group["weight_decay"], group["nesterov"], group["maximize"]
            for tensor in group["params"]:
                grad = tensor.grad
                if grad is None:
                    continue
                d_p = -grad if maximize else grad
                if weight_decay != 0:
                    d_p = d_p.add(tensor, alpha=weight_decay)
                if momentum != 0:
                    state = self.state.setdefault(tensor, {})
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = d_p.clone()
                        state["momentum_buffer"] = buf
                    else:
                        buf.mul_(momentum).add_(d_p, alpha=1 - dampening)
                    d_p = d_p.add(buf, alpha=momentum) if nesterov else buf
                tensor.add_(d_p, alpha=-lr)

    # -- checkpointing (torch.optim's layout: state keyed by parameter index) ------------------

    def state_dict(self) -> dict[str, Any]:
        index_of: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = []
            for tensor in group["params"]:
                index_of.setdefault(id(tensor), len(index_of))
                packed["params"].append(index_of[id(tensor)])
            groups.append(packed)
        state = {}
        for group in self.param_groups:
            for tensor in group["params"]:
                entry = self.state.get(tensor)
                if entry:
                    state[index_of[id(tensor)]] = {k: v.clone() for k, v in entry.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        groups = state_dict.get("param_groups")
        if not isinstance(groups, list) or len(groups) != len(self.param_groups):
            raise CheckpointError("optimizer state has a different number of parameter groups")
        for saved, group in zip(groups, self.param_groups):
            if len(saved.get("params", [])) != len(group["params"]):
                raise CheckpointError("optimizer state has parameter groups of different sizes")
        by_index: dict[int, torch.Tensor] = {}
        for saved, group in zip(groups, self.param_groups):
            for index, tensor in zip(saved["params"], group["params"]):
                by_index[int(index)] = tensor
            for key in _DEFAULTS_KEYS:
                if key in saved:
                    group[key] = saved[key]
        self.state = {}
        for index, entry in state_dict.get("state", {}).items():
            tensor = by_index.get(int(index))
            if tensor is None:
                raise CheckpointError(f"optimizer state refers to an unknown parameter {index}")
            new_entry = {}
            for key, value in entry.items():
                if isinstance(value, torch.Tensor):
                    if tuple(value.shape) != tuple(tensor.shape):
                        raise CheckpointError(
                            f"optimizer state {key!r} of parameter {index} has the wrong shape"
                        )
                    value = value.detach().to(device=tensor.device, dtype=tensor.dtype, copy=True)
                new_entry[key] = value
            self.state[tensor] = new_entry
