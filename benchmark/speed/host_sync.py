"""Find host-device synchronisations in a training step, on any device.

On CUDA, PyTorch's own ``torch.cuda.set_sync_debug_mode("error")`` makes a synchronising
call raise. On the CPU nothing synchronises, so that mode cannot see a ``.item()`` that
would stall a GPU. `HostSyncDetector` fills that gap: a ``TorchDispatchMode`` that looks at
every ATen operator the step runs and records those that synchronise when their tensors
live on a CUDA device. It lets the CPU test suite prove that `update` is sync-free.

What it flags (each one waits for the GPU on CUDA):

- ``_local_scalar_dense``: a tensor read as a Python number (``.item()``, ``float(t)``,
  ``int(t)``, ``if t:``);
- ops whose output size depends on the data: ``nonzero``/``argwhere``, ``masked_select``,
  ``unique*``, ``bincount``, ``repeat_interleave`` without ``output_size``, and indexing
  (read or write) with a boolean mask;
- ``equal`` (returns a Python bool);
- ``linalg_eigh`` (cuSOLVER's error check reads an info flag on the host);
- ``lift_fresh``: a tensor of one or more dimensions built from Python data inside the
  step (a host-to-device copy; a 0-d one is a CPU scalar that CUDA kernels take as is).

Copies to the host (``.cpu()``, ``.tolist()``, ``.numpy()``) do not pass through an operator
the mode can see on the CPU; CUDA's own mode covers those.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# overload packet -> what it is in user code
SYNCING: dict[Any, str] = {
    aten._local_scalar_dense: "a tensor read as a Python number (.item(), float(), if t:)",
    aten.nonzero: "nonzero (output size depends on the data)",
    aten.argwhere: "argwhere (output size depends on the data)",
    aten.masked_select: "masked_select (output size depends on the data)",
    aten._unique: "unique (output size depends on the data)",
    aten._unique2: "unique (output size depends on the data)",
    aten.unique_dim: "unique (output size depends on the data)",
    aten.unique_consecutive: "unique_consecutive (output size depends on the data)",
    aten.bincount: "bincount (output size depends on the data)",
    aten.equal: "torch.equal (returns a Python bool)",
    aten._linalg_eigh: "torch.linalg.eigh (checks errors on the host)",
}
INDEXING = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}


def _bool_mask_indexing(func: Any, args: tuple[Any, ...]) -> bool:
    """Whether an indexing op is given a boolean mask (it runs nonzero on the mask)."""
    if func.overloadpacket not in INDEXING or len(args) < 2:
        return False
    indices = args[1] or ()
    return any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices
    )


def _syncs(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """Why `func(*args, **kwargs)` synchronises on CUDA, or None when it does not."""
    packet = func.overloadpacket
    if packet in SYNCING:
        return SYNCING[packet]
    tensor_repeats = func._overloadname in ("Tensor", "self_Tensor")
    if packet is aten.repeat_interleave and tensor_repeats and kwargs.get("output_size") is None:
        return "repeat_interleave with tensor repeats and no output_size"
    if _bool_mask_indexing(func, args):
        return "indexing with a boolean mask (runs nonzero)"
    if packet is aten.lift_fresh and args[0].dim() > 0:  # a 0-d one is a CPU scalar operand
        return "a tensor built from Python data in the step (host-to-device copy)"
    return None


class HostSyncDetector(TorchDispatchMode):
    """Records, in order, every operator run under it that synchronises on CUDA.

    ``found`` holds ``"aten::op: why"`` strings and ``seen`` counts every operator looked
    at; the ops still run normally. Use `no_host_sync` to raise instead.
    """

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.seen = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        self.seen += 1
        why = _syncs(func, args, kwargs)
        if why is not None:
            self.found.append(f"{func.overloadpacket._qualified_op_name}: {why}")
        return func(*args, **kwargs)


class HostSyncError(RuntimeError):
    """A step ran an operator that synchronises the host with the device."""


@contextlib.contextmanager
def no_host_sync(device: torch.device) -> Iterator[None]:
    """Raise `HostSyncError` (CPU) or CUDA's own error when the body synchronises.

    On CUDA this is ``torch.cuda.set_sync_debug_mode("error")`` (which also sees
    device-to-host copies); elsewhere `HostSyncDetector`, checked when the body ends.
    """
    if device.type == "cuda":
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(previous)
        return
    detector = HostSyncDetector()
    with detector:
        yield
    if detector.found:
        raise HostSyncError(f"host sync in the step: {detector.found[0]}")


def first_host_sync(run: Callable[[], object], device: torch.device) -> str | None:
    """Run `run()` once under `no_host_sync`; the first sync's message, or None."""
    try:
        with no_host_sync(device):
            run()
    except RuntimeError as exc:  # HostSyncError, or CUDA's sync debug error
        message = str(exc).strip()
        if not isinstance(exc, HostSyncError) and "synchroniz" not in message:
            raise
        return message.splitlines()[0]
    return None
