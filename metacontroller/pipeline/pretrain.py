"""Pretraining phase: behaviour cloning of the base model on D (SPEC §2)."""
from __future__ import annotations

import numpy as np
import torch
from torch_einops_utils import lens_to_mask
from tqdm.auto import tqdm

from metacontroller import Transformer
from metacontroller.demos import DemoDataset
from metacontroller.distributed import SINGLE, Process
from metacontroller.pipeline.config import PretrainConfig
from metacontroller.pipeline.data import bucketed_batches, ordered_batches, to_device


def train(model: Transformer, dataset: DemoDataset, config: PretrainConfig, seed: int, device: str, progress: bool = True,
          process: Process = SINGLE) -> list[float]:
    """AdamW on action NLL + λ · next-observation loss; returns the action-NLL trace (one value per step).
    Data parallel over `process`'s ranks: every rank draws the same global batches and trains on its part."""
    params = list(model.parameters())
    process.broadcast_parameters(model)
    optimizer = torch.optim.AdamW(params, lr = config.lr, weight_decay = config.weight_decay)
    batches = bucketed_batches(dataset, config.batch_size, np.random.default_rng(seed), min_size = process.world_size)
    trace = []
    model.train()
    with tqdm(range(config.steps), desc = 'pretrain', disable = not (progress and process.is_main)) as bar:
        for step in bar:
            indices = next(batches)
            batch = to_device(dataset.batch(indices[process.shard(len(indices))]), device)
            with process.autocast():
                losses = model(batch.observations, batch.actions, episode_lens = batch.episode_lens)
            # each loss is a mean over its own steps: the action's every valid step, the state's those with a next one
            share = process.share(torch.stack((batch.episode_lens.sum(), (batch.episode_lens - 1).sum())))
            loss = losses.action * share[0] + config.state_loss_weight * losses.state * share[1]
            optimizer.zero_grad(set_to_none = True)
            process.backward(loss, params)
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            trace.append(process.mean(losses.action.detach() * share[0]).item())
            if step % 10 == 0:
                bar.set_postfix(action_nll = f'{np.mean(trace[-50:]):.3f}')
    model.eval()
    return trace


@torch.no_grad()
def imitation_metrics(model: Transformer, dataset: DemoDataset, device: str, batch_size: int = 256) -> dict:
    """Action NLL and expert-match rate (argmax action = the expert's) over valid steps.
    The expert breaks ties at random, so expert_match < 1 even for a perfect imitator."""
    nll_sum, match_sum, steps = 0., 0., 0
    for batch in ordered_batches(dataset, batch_size, device):
        stream = model.upper_body(model.residual_stream(batch.observations))
        logits = model.action_readout(stream)
        mask = lens_to_mask(batch.episode_lens, logits.shape[1])
        log_probs = logits.log_softmax(dim = -1)
        nll = -log_probs.gather(-1, batch.actions[..., None])[..., 0]
        nll_sum += nll[mask].sum().item()
        match_sum += (logits.argmax(dim = -1) == batch.actions)[mask].sum().item()
        steps += int(mask.sum())
    return dict(action_nll = nll_sum / steps, expert_match = match_sum / steps)
