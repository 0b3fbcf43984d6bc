"""Probe phase: linear subgoal probes on the residual stream at every layer (SPEC §7.1, paper C.2).

One linear map per layer, fit on D* episodes and scored on held-out episodes;
all layers are fit together as one batched problem (they are independent).
Features are standardised per layer with training statistics, since the
residual norm grows with depth and plain AdamW would otherwise favour some layers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch_einops_utils import lens_to_mask
from tqdm.auto import tqdm

from metacontroller import Transformer
from metacontroller.demos import DemoDataset
from metacontroller.pipeline.config import ProbeConfig
from metacontroller.pipeline.data import ordered_batches


@torch.no_grad()
def layer_features(model: Transformer, dataset: DemoDataset, device: str, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid steps only: features (L + 1, N, d) and subgoal labels (N,)."""
    features, labels = [], []
    for batch in ordered_batches(dataset, batch_size, device):
        mask = lens_to_mask(batch.episode_lens, batch.observations.shape[1])
        streams = torch.stack(model.layer_residuals(batch.observations, condition = batch.condition))     # (L + 1, b, t, d)
        features.append(streams[:, mask])
        labels.append(batch.subgoals[mask])
    return torch.cat(features, dim = 1), torch.cat(labels)


def fit_and_score(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor], num_classes: int,
                  config: ProbeConfig, seed: int, progress: bool = True) -> list[float]:
    """Test accuracy of each layer's probe."""
    (x_train, y_train), (x_test, y_test) = train, test
    mean, std = x_train.mean(dim = 1, keepdim = True), x_train.std(dim = 1, keepdim = True) + 1e-5
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    layers, _, dim = x_train.shape

    generator = torch.Generator().manual_seed(seed)
    weight = (torch.randn(layers, dim, num_classes, generator = generator) * dim ** -0.5).to(x_train.device).requires_grad_()
    bias = torch.zeros(layers, 1, num_classes, device = x_train.device, requires_grad = True)
    optimizer = torch.optim.AdamW([weight, bias], lr = config.lr, weight_decay = 0.)

    def logits(x):
        return einsum(x, weight, 'l n d, l d c -> l n c') + bias

    targets = y_train.expand(layers, -1)
    with tqdm(range(config.steps), desc = 'probe', disable = not progress) as bar:
        for _ in bar:
            loss = F.cross_entropy(rearrange(logits(x_train), 'l n c -> (l n) c'), rearrange(targets, 'l n -> (l n)'))
            optimizer.zero_grad(set_to_none = True)
            loss.backward()
            optimizer.step()
            if bar.n % 10 == 0:
                bar.set_postfix(loss = f'{loss.item():.3f}')

    with torch.no_grad():
        accuracy = (logits(x_test).argmax(dim = -1) == y_test).float().mean(dim = 1)
    return accuracy.tolist()
