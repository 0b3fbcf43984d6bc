"""A fresh decoder trained on a discovery's own codes: is the discovered decoder's failure off the pretraining
graph its training's, or the codes'? (issue 15)

`decoder_ceiling.py` found that on the flag's seed-0 base at P16c's compute no code, not even one per subgoal
fitted with the labels, takes the discovered decoder through ABCDAB, where the ground-truth controllers (the same
hypernetwork shape, trained on D* with the labels as input) finish 0.360. This trains a fresh decoder the way the
control phase trains the controllers (its steps, learning rate and weight decay, control starting as a no-op), but
with the discovered z of every step of D* as input (one posterior sample per step, drawn once; the encoder and the
switch frozen; no labels), and writes a copy of the run folder whose metacontroller carries it, for
`decoder_ceiling.py`. If the fresh decoder's fitted codes then take ABCDAB, discovery's joint training was the
limit; if not, what the codes carry is. `--inputs labels` is the check of the method: the same training on the
one-hot ground-truth subgoal of each step (padded to n_z) in place of z, which is the controllers' training, so
its fitted codes should take ABCDAB about as often as the controllers. `--inputs branches` is the same with
labels that name a branch instead: which of the two successors of the previous subgoal in the pretraining graph
comes next (A -> {C, D}, ...; two codes), and the subgoal itself only for an episode's first segment, where there
is no previous one (four more): a branch code by construction.

    python docs/experiments/refit_decoder.py runs/f20c_2s runs/f20c_2s_refit
    python docs/experiments/decoder_ceiling.py runs/f20c_2s_refit --controllers runs/f20c --task ABCDAB
"""
import argparse
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from discovery_data import graph
from policy_noise import load
from torch_einops_utils import lens_to_mask

from metacontroller import MetaController
from metacontroller.envs import pinpad
from metacontroller.hypernetwork import ControllerDecoder
from metacontroller.pipeline import control, data, discover
from metacontroller.rl.seeds import seeded
from metacontroller.transformer import frozen


def successors() -> list[list[int]]:
    """Each subgoal's two successors in the pretraining graph, in order (A -> [C, D], ...)."""
    names = pinpad.SUBGOAL_NAMES
    return [sorted(names.index(b) for a, b in graph() if a == name) for name in names]


def branch_labels(labels: torch.Tensor) -> torch.Tensor:
    """(b, t) subgoal ids -> (b, t) ids of `--inputs branches`: 0 or 1, which successor of the previous segment's
    subgoal this one is; 2 + the subgoal in an episode's first segment."""
    after = successors()
    out, previous = torch.empty_like(labels), torch.full_like(labels[:, 0], -1)
    for t in range(labels.shape[1]):
        changed = (labels[:, t] != labels[:, t - 1]) if t else torch.zeros_like(previous, dtype = torch.bool)
        previous = torch.where(changed, labels[:, t - 1], previous)
        branch = [after[p].index(s) if p >= 0 and s in after[p] else 2 + s for p, s in zip(previous.tolist(), labels[:, t].tolist())]
        out[:, t] = torch.tensor(branch)
    return out


def inputs(meta: MetaController, batch, stream: torch.Tensor, kind: str) -> torch.Tensor:
    """(b, t, n_z): one posterior sample of the discovered z per step, or a one-hot label padded with zeros."""
    if kind == 'discovered':
        return meta(stream, batch.episode_lens).latent
    labels = control.step_labels(batch)
    return F.one_hot(labels if kind == 'labels' else branch_labels(labels), meta.decoder.hidden[0].in_features).float()


def main():
    parser = argparse.ArgumentParser(description = __doc__.split('\n')[0])
    parser.add_argument('run_dir', type = Path, help = 'a pinpad run folder whose discover phase has run')
    parser.add_argument('out', type = Path, help = 'the copy of run_dir (without rl, baselines) to write, replaced if there')
    parser.add_argument('--steps', type = int, default = None, help = "AdamW steps (default: the run's --control.steps)")
    parser.add_argument('--inputs', choices = ('discovered', 'labels', 'branches'), default = 'discovered',
                        help = "the decoder's input at each step: the discovered z, the one-hot subgoal label (the check) "
                               'or the branch of the pretraining graph taken (labels that name a branch)')
    parser.add_argument('--threads', type = int, default = 1, help = 'torch threads')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config, seed, model, _ = load(args.run_dir)
    meta = MetaController.init_and_load(args.run_dir / 'discover' / 'meta_controller.pt').eval()
    streams = discover.precompute(model, data.load(args.run_dir / 'data', 'discovery'), config.control.batch_size, seed, 'cpu')
    with seeded(seed, torch.device('cpu')), torch.no_grad():
        batches = [(batch, (stream, inputs(meta, batch, stream, args.inputs))) for batch, stream in streams]
    old = meta.decoder
    torch.manual_seed(seed)
    decoder = ControllerDecoder(old.hidden[0].in_features, model.dim, old.dim_hidden, old.rank)

    def loss_fn(step, batch, inputs):
        stream, latent = inputs                                           # (b, t, d), (b, t, n_z)
        mask = lens_to_mask(batch.episode_lens, stream.shape[1])
        with frozen(*model.base_modules()):
            logits = model.action_logits(batch.observations, stream = decoder.control(latent, stream, meta.control_scale),
                                         condition = batch.condition)
        nll = -model.action_readout.log_prob(logits, batch.actions.masked_fill(~mask, 0))[mask].mean()
        return nll, nll[None]

    steps = args.steps or config.control.steps
    trace = discover.fit(decoder, batches, loss_fn, steps, config.control.lr, config.control.weight_decay, seed,
                         'fresh decoder', dict(action_nll = '.3f'))
    last = trace[-50:]
    print(f'fresh decoder: training action NLL {sum(nll for nll, in last) / len(last):.3f} (last {len(last)} steps)')
    meta.decoder = decoder
    shutil.rmtree(args.out, ignore_errors = True)
    shutil.copytree(args.run_dir, args.out, ignore = shutil.ignore_patterns('run.lock', 'rl', 'baselines'))
    meta.save(args.out / 'discover' / 'meta_controller.pt')
    print(f'written: {args.out}')


if __name__ == '__main__':
    main()
