"""How this process takes part in a run: alone (the default), or as one rank of a data-parallel job.

`accelerate launch --num_processes N script.py` and `torchrun --nproc_per_node N script.py` start N
copies of a script with WORLD_SIZE, RANK, LOCAL_RANK and MASTER_ADDR in their environment. `setup`
reads them. Launched that way, it builds an `accelerate.Accelerator`, which joins the process group
(gloo on CPUs, NCCL on GPUs, one GPU per local rank). Otherwise it returns a `Process` that uses no
accelerate and no process group, and each collective below is the identity: a single-process run
computes exactly what it would without this module.

Gradients are averaged explicitly rather than by DDP: the training steps call `Transformer.discovery_losses`
and `MetaController.policy_loss`, not `forward`, and DDP only hooks `forward`. After each backward,
`Process.backward` averages the gradients with one all-reduce of a flat buffer. With weights from
`Process.share`, that average is the gradient of the loss over the global batch.
"""
from __future__ import annotations

import atexit
import contextlib
import itertools
import os

import torch
from torch import Tensor, nn

MIXED_PRECISION = ('no', 'bf16')


def native_bf16(device: str | torch.device) -> bool:
    """Whether `device` has bf16 matmul kernels rather than emulating them (README, "Speed": on an AVX2-only
    CPU bf16 autocast is many times slower than fp32). CPUs: oneDNN's own check (AVX-512 and newer);
    CUDA: compute capability 8.0 and up; anything else, or a torch that cannot tell, is taken to have them."""
    device = torch.device(device)
    try:
        if device.type == 'cuda':
            return torch.cuda.get_device_capability(device) >= (8, 0) or torch.version.hip is not None
        if device.type == 'cpu':
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())   # private, hence the fallback below
    except (AttributeError, RuntimeError):
        pass
    return True


class Process:
    """One process of a run. `accelerator` is None when the process runs alone."""

    def __init__(self, device: str | torch.device = 'cpu', mixed_precision: str = 'no', accelerator = None):
        if mixed_precision not in MIXED_PRECISION:
            raise ValueError(f'mixed_precision must be one of {MIXED_PRECISION}, got {mixed_precision!r}')
        self.device, self.mixed_precision, self.accelerator = torch.device(device), mixed_precision, accelerator

    @property
    def rank(self) -> int:
        return 0 if self.accelerator is None else self.accelerator.process_index

    @property
    def world_size(self) -> int:
        return 1 if self.accelerator is None else self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files, logs and shows progress bars."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of n items; parts differ in size by at most one, and are in rank order."""
        return slice(n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size)

    def autocast(self):
        """bf16 autocast when asked for. This is the context accelerate's `Accelerator.autocast` returns;
        calling torch directly keeps the single-process path free of accelerate's process-wide state."""
        if self.mixed_precision == 'no':
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype = torch.bfloat16)

    def sum(self, values: Tensor) -> Tensor:
        """Elementwise sum over ranks."""
        if self.world_size == 1:
            return values
        return self.accelerator.reduce(values.to(self.device), reduction = 'sum')

    def mean(self, values: Tensor) -> Tensor:
        """Mean over ranks; of values weighted by `share`, the mean over the global batch."""
        return self.sum(values) / self.world_size

    def share(self, counts: Tensor) -> Tensor:
        """Weights for this rank's mean losses, each over `counts` local items (steps). Scaled by them,
        the ranks' gradients average to the gradient of the mean over every rank's items, even when
        ranks hold different numbers of items. All ones when alone."""
        counts = counts.float()
        if self.world_size == 1:
            return torch.ones_like(counts)
        return counts * self.world_size / self.sum(counts).clamp_min(1.)

    def backward(self, loss: Tensor, params: list[nn.Parameter]):
        """loss.backward(), then average the gradients of `params` over ranks.

        Backward runs with autocast off even inside an autocast block: the hand-written backward
        passes (the switching recurrence) are fp32. Every rank must give gradients to the same
        parameters: the graph does not depend on the data here. A parameter without a gradient keeps
        none, so AdamW skips it as in a single process."""
        with torch.autocast(self.device.type, enabled = False):
            loss.backward()
        if self.world_size == 1:
            return
        params = [p for p in params if p.grad is not None]
        flat = self.accelerator.reduce(torch.cat([p.grad.flatten() for p in params]), reduction = 'mean')
        for param, grad in zip(params, flat.split([p.numel() for p in params])):
            param.grad = grad.view_as(param)

    def optimizer_step(self, loss: Tensor, optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
                       max_grad_norm: float | None = None):
        """One step of every training loop: the gradients of `loss` averaged over ranks (`backward`),
        their norm clipped to `max_grad_norm` when given, then the optimiser's update."""
        optimizer.zero_grad(set_to_none = True)
        self.backward(loss, params)
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()

    def broadcast_parameters(self, module: nn.Module):
        """Give every rank rank 0's weights and buffers, so data-parallel training starts in step."""
        if self.world_size == 1:
            return
        from accelerate.utils import broadcast
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            broadcast(tensor.data, from_process = 0)

    def broadcast_object(self, value):
        """Rank 0's picklable `value`, on every rank."""
        if self.world_size == 1:
            return value
        from accelerate.utils import broadcast_object_list
        return broadcast_object_list([value])[0]

    def gather(self, values: Tensor) -> Tensor:
        """Every rank's `values` (first dimensions may differ) concatenated in rank order."""
        if self.world_size == 1:
            return values
        from accelerate.utils import gather_object
        return torch.cat(gather_object([values.cpu()])).to(values.device)

    def wait(self):
        """Barrier: what rank 0 wrote before it is visible to every rank after it."""
        if self.world_size > 1:
            self.accelerator.wait_for_everyone()


SINGLE = Process()   # the default everywhere: one process on the CPU, full precision


def adamw(params, lr: float, weight_decay: float = 0., betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """The optimiser of every training loop. Fused: one kernel for all parameters instead of
    ~10 ops per tensor (on CPU ~4 ms of a ~90 ms pretraining step)."""
    return torch.optim.AdamW(params, lr = lr, betas = betas, weight_decay = weight_decay, fused = True)


def launched() -> bool:
    """Started by `accelerate launch` or `torchrun` with more than one process."""
    return int(os.environ.get('WORLD_SIZE', '1')) > 1


def setup(device: str = 'cpu', mixed_precision: str = 'no') -> Process:
    """This process, for `device` ('cpu', 'cuda', ...). Under a multi-process launch each rank takes the
    device of its local rank, and only then is accelerate imported and the process group joined."""
    device = torch.device(device)
    if not launched():
        return Process(device, mixed_precision)
    if device.index is not None:
        raise ValueError(f'device {device}: under a multi-process launch each rank uses the {device.type} device '
                         f'of its local rank; pass {device.type!r} without an index')
    from accelerate import Accelerator
    accelerator = Accelerator(cpu = device.type == 'cpu')
    # leave the process group before the interpreter shuts down: tearing gloo's threads down
    # later, at C++ exit, aborted about 1 run in 15 here ("terminate called without an active exception")
    atexit.register(accelerator.end_training)
    own = torch.device('cpu') if accelerator.device.type == 'cpu' else accelerator.device   # accelerate says 'cpu:0'
    return Process(own, mixed_precision, accelerator)
