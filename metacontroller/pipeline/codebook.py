"""The codes discovery uses, and internal RL's optional action codebook (`--rl.codebook K`; not in the paper).

The paper's internal RL draws z from a Gaussian policy that starts at the N(0, I) prior. On pinpad the
discovered codes of each subgoal form a cloud offset from 0, and prior samples fall between the clouds
more often than the held codes do (docs/reproduction.md, "the prior sits between the subgoals' codes").
With a codebook, the policy instead chooses among K centroids that k-means finds among the held codes
z of the discovery data; no label enters. With `--rl.codebook_spread σ0` it draws z around the chosen
centroid, so the code can follow the state (the summary's `spread` is each cluster's own RMS std per
dimension, a scale to compare σ0 with). The labels are read afterwards, only to report how pure
each centroid's cluster is.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple

import torch
from torch_einops_utils import lens_to_mask

from metacontroller import MetaController, Transformer
from metacontroller.codes import kmeans
from metacontroller.demos import DemoDataset
from metacontroller.pipeline.data import ordered_batches


class HeldCodes(NamedTuple):
    codes: torch.Tensor      # the held code z at every valid step (N, n_z), built from sampled proposals as in training
    subgoals: torch.Tensor   # the step's subgoal label (N,), -1 where unlabelled


@torch.no_grad()
def held_code_batches(model: Transformer, meta_controller: MetaController, dataset: DemoDataset, device: str,
                      batch_size: int = 256) -> Iterator[HeldCodes]:
    """The code z the metacontroller holds at every valid step of `dataset`'s episodes, and the step's label,
    one batch of episodes at a time (a reader that only sums them need not hold them all)."""
    for batch in ordered_batches(dataset, batch_size, device):
        stream = model.residual_stream(batch.observations, condition = batch.condition)
        latent = meta_controller(stream, batch.episode_lens).latent
        mask = lens_to_mask(batch.episode_lens, latent.shape[1])
        yield HeldCodes(latent[mask].float(), batch.subgoals.long()[mask])


def held_codes(model: Transformer, meta_controller: MetaController, dataset: DemoDataset, device: str,
               batch_size: int = 256) -> HeldCodes:
    """`held_code_batches`, all of them together."""
    codes, subgoals = zip(*held_code_batches(model, meta_controller, dataset, device, batch_size))
    return HeldCodes(torch.cat(codes), torch.cat(subgoals))


def fit(model: Transformer, meta_controller: MetaController, dataset: DemoDataset, k: int, seed: int,
        device: str, spread: float = 0.) -> tuple[MetaController, dict]:
    """A copy of the metacontroller whose policy chooses among the k-means centroids (k, n_z) of the codes
    it holds on `dataset` (with `spread` > 0: draws around them), and a summary: each centroid's share of
    the codes and its cluster's RMS std per dimension, the subgoal most of its codes carry, and the purity
    (the share of codes whose cluster's majority is their own subgoal, over the labelled steps)."""
    with torch.random.fork_rng(devices = [torch.device(device)] if torch.device(device).type == 'cuda' else []):
        torch.manual_seed(seed)   # the held codes are built from sampled proposals: every rank must fit the same codebook
        held = held_codes(model, meta_controller, dataset, device)
    centroids = kmeans(held.codes, k, seed = seed)
    cluster = torch.cdist(held.codes, centroids).argmin(dim = -1)
    counts = torch.bincount(cluster, minlength = k)
    squares = torch.zeros(k, device = cluster.device).index_add_(0, cluster, (held.codes - centroids[cluster]).pow(2).mean(dim = -1))
    summary = dict(size = k, codes = len(held.codes), share = (counts / len(cluster)).tolist(),
                   spread = (squares / counts.clamp(min = 1)).sqrt().tolist())
    labelled = held.subgoals >= 0
    if labelled.any():   # data without subgoal labels has no purity to report
        tally = torch.zeros(k, int(held.subgoals.max()) + 1, device = cluster.device)   # (cluster, subgoal) counts
        tally.index_put_((cluster[labelled], held.subgoals[labelled]), torch.ones(()), accumulate = True)
        summary.update(majority_subgoal = tally.argmax(dim = -1).tolist(), purity = (tally.max(dim = -1).values.sum() / tally.sum()).item())
    return meta_controller.with_action_codebook(centroids, spread), summary
