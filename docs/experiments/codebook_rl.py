"""The comparisons of internal RL over an action codebook (`--rl.codebook K`), run on a finished run folder
with the RL settings of its config.json (issue 15; docs/reproduction.md, "Internal RL over a codebook"):

- `beta1`: the β ≡ 1 baseline of the folder's internal RL, a fresh choice at every raw step: over the same
  k-means codebook, or on a folder without `--rl.codebook` a fresh z from the Gaussian policy (the paper's baseline);
- `random`: internal RL over K random N(0, I) draws instead of the centroids (seeded by the run's seed);
- `raw`: the raw-action baseline alone (the `baselines` phase runs it together with β ≡ 1);
- `spread`: internal RL goes on from the phase's trained codebook policy, now drawing z from a Gaussian
  around the chosen centroid (`--spread σ0`, `--rl.codebook_spread`): the policy's GRU and logits carry
  over and each centroid's offset and variance start near zero, so it starts as the trained policy with
  σ0 of noise on its codes, and the codes can then follow the state. `--spread 0` goes on with the exact
  centroids, the control with the same budget and a fresh optimiser. The pipeline's
  `--rl.codebook_spread_after N` runs both stages in one phase (on seed 0 it gives this mode's figures exactly);
- `final`: the phase's final evaluation of an internal-RL run, with or without a codebook (stopped before
  its budget, or finished; of a run in two stages, its second), on the policy its progress file holds, and
  the folder's ground-truth controllers on the same episodes (sampled and greedy), for the ratio the issue
  sets its bar on.
  `--episodes N` evaluates on N episodes instead of `--rl.final_eval_episodes` (5,000 puts a standard
  error of about 0.006 on a success near 0.2).

Each trains with `--budget` episodes (default: the folder's) and saves its progress beside the phase's
own files, so a stopped run goes on; the summary goes to a JSON file in the same place.

    python docs/experiments/codebook_rl.py beta1 runs/cb4 --budget 400000
    python docs/experiments/codebook_rl.py spread runs/cb4 --spread 0.2 --budget 200000
"""
import argparse
import json
from pathlib import Path

import torch

from metacontroller import MetaController
from metacontroller.pipeline import rl_phase
from metacontroller.pipeline.adapters.pinpad import pinpad_adapter
from metacontroller.pipeline.config import from_dict, override
from metacontroller.pipeline.control import subgoal_intervention
from metacontroller.pipeline.files import write_json
from metacontroller.pipeline.phases import Run, rl_meta_controller
from metacontroller.subgoal_controller import SubgoalController

SUMMARY = ('success', 'success_by_policy', 'controllers', 'episodes', 'initial_success')


def controllers_success(run: Run, model, make_envs, config) -> dict:
    """The folder's ground-truth controllers on the final evaluation's episodes (the same seeds), sampled and greedy."""
    intervene = subgoal_intervention(SubgoalController.init_and_load(run.path('control', 'controller.pt')).to(run.device).eval())
    return rl_phase.final_success(model, make_envs, config, run.seed, intervention = intervene)['success_by_policy']


def trained_policy(run: Run, model, spread: float | None = None) -> tuple[MetaController, dict, list[dict]]:
    """The rl phase's codebook metacontroller with the policy its progress file holds (with `spread`: the one
    the `spread` mode trained from it; in a phase of two stages, `--rl.codebook_spread_after`, its second
    stage's), the codebook's summary, and the progress of each stage that trained it, the first first."""
    meta, codes = rl_meta_controller(run, model)
    staged = spread is None and run.config.rl.codebook_spread_after > 0
    if spread is not None:
        meta, name = meta.with_codebook_spread(spread), f'spread_{spread}'
    else:
        meta, name = (meta.with_codebook_spread(run.config.rl.codebook_spread) if staged else meta), 'internal'
    last = run.progress_path('rl', name)
    stages = [torch.load(path, map_location = 'cpu', weights_only = True)
              for path in [rl_phase.exact_stage_file(last)] * staged + [last]]
    meta.load_state_dict(stages[-1]['module'])
    return meta, codes, stages


def main():
    parser = argparse.ArgumentParser(description = __doc__.split('\n\n')[0])
    parser.add_argument('mode', choices = ('beta1', 'random', 'raw', 'spread', 'final'))
    parser.add_argument('run_dir', type = Path, help = 'a pinpad run folder whose discover phase has run')
    parser.add_argument('--budget', type = int, help = 'training episodes (default: --rl.total_episodes of the folder)')
    parser.add_argument('--episodes', type = int, help = '`final`: evaluation episodes (default: --rl.final_eval_episodes of the folder)')
    parser.add_argument('--spread', type = float, help = '`spread`: the std σ0 of z around the chosen centroid, to start (0: exact)')
    parser.add_argument('--threads', type = int, default = 1)
    args = parser.parse_args()
    if args.episodes is not None and (args.mode != 'final' or args.episodes < 1):
        parser.error(f'--episodes is the number of evaluation episodes of `final` (>= 1); got {args.episodes} with {args.mode}')
    if (args.mode == 'spread' or args.spread is not None) and not (args.mode in ('spread', 'final') and args.spread is not None and args.spread >= 0):
        parser.error(f'--spread σ0 >= 0 goes with `spread` (the start) and `final` (the policy it trained); got {args.spread} with {args.mode}')
    torch.set_num_threads(args.threads)
    saved = json.loads((args.run_dir / 'config.json').read_text())
    config = from_dict(saved['config'])
    if args.budget:
        config = override(config, {'rl.total_episodes': args.budget})
    if args.episodes:
        config = override(config, {'rl.final_eval_episodes': args.episodes})
    if args.mode == 'spread' and config.rl.codebook_spread_after:
        parser.error(f'{args.run_dir} already trains the spread in its rl phase (--rl.codebook_spread_after '
                     f'{config.rl.codebook_spread_after}); give that phase a larger --rl.total_episodes instead')
    run = Run(args.run_dir, config, pinpad_adapter().for_config(config), seed = saved['seed'], progress = False)
    model = run.load_model()
    make_envs = run.adapter.make_envs((run.adapter.post_task,))
    phase = 'rl' if args.mode in ('random', 'spread', 'final') else 'baselines'
    (args.run_dir / phase).mkdir(exist_ok = True)

    if args.mode == 'raw':
        summary, _ = rl_phase.raw_action(model, make_envs, config.rl, run.seed, False, progress_file = run.progress_path(phase, 'raw_action'))
    elif args.mode == 'random':
        meta = run.load_meta_controller()
        codebook = torch.randn(config.rl.codebook, meta.dim_latent, generator = torch.Generator().manual_seed(run.seed))
        summary, _ = rl_phase.internal(model, meta.with_action_codebook(codebook), make_envs, config.rl, run.seed, False,
                                       progress_file = run.progress_path(phase, 'random_codebook'))
        summary['codebook'] = codebook.tolist()
    elif args.mode == 'spread':
        trained, codes, stages = trained_policy(run, model)
        summary, _ = rl_phase.internal(model, trained.with_codebook_spread(args.spread), make_envs, config.rl, run.seed, False,
                                       progress_file = run.progress_path(phase, f'spread_{args.spread}'))
        summary.update(codes, spread = args.spread, trained_before = stages[-1]['episodes'])
    elif args.mode == 'beta1':
        meta, codes = rl_meta_controller(run, model)
        summary, _ = rl_phase.internal(model, meta, make_envs, config.rl, run.seed, False, force_beta = 1.,
                                       progress_file = run.progress_path(phase, 'beta1'))
        summary.update(codes)
    else:
        meta, codes, stages = trained_policy(run, model, args.spread)
        summary = dict(rl_phase.final_success(model, make_envs, config.rl, run.seed, meta.eval()), **codes,
                       episodes = sum(stage['episodes'] for stage in stages), initial_success = stages[0]['curve'][0][1],
                       controllers = controllers_success(run, model, make_envs, config.rl))
    # e.g. codebook_rl_spread_0.2.json, codebook_rl_final_spread_0.2_5000.json: no run overwrites another's file
    name = [args.mode] * (args.mode != 'spread') + [f'spread_{args.spread}'] * (args.spread is not None) + [str(args.episodes)] * bool(args.episodes)
    write_json(args.run_dir / phase / f'codebook_rl_{"_".join(name)}.json', summary)
    print({k: summary[k] for k in SUMMARY if k in summary})


if __name__ == '__main__':
    main()
