"""Do a run's switches fall where the base model is surprised? The score `--discovery.first_stage_restarts` picks by.

The paper's objective at one α puts one switch per subgoal on the boundaries on some discovery seeds and on each
pair's first colour (or about once per episode) on others, and only the first gives codes internal RL can use. On
pinpad a pair's second colour follows from its first, so after a first colour the base knows where the agent goes;
after a boundary it does not. `switch_surprise` (the discover phase's analysis) is the base's mean action NLL at the
switch steps over its mean at every step, `switch_contrast` (what the pick ranks by) the same over its mean at the
other steps, both read without labels. This prints them for finished runs or checkpoints, on the discovery episodes
the pick reads (its first 1,024) and, with the labels for comparison, on the held-out ones:

    python docs/experiments/switch_surprise.py 'seed 0=runs/a' 'first stage=runs/a:discover/first_stage_meta_controller.pt'

A first-stage start's progress file (`discover/progress_first_stage_start_R.pt`) is read as its weights in the
shape of the folder's saved first stage; `--seed` then draws as the pick does for start R with the run's seed + 1,000·R.
"""
import argparse
from pathlib import Path

import torch

from metacontroller import MetaController, Transformer
from metacontroller.pipeline import data, discover
from metacontroller.pipeline.adapters.pinpad import pinpad_adapter
from metacontroller.pipeline.phases import PROGRESS_PREFIX, SURPRISE_EPISODES


def load_meta_controller(run_dir: Path, checkpoint: str) -> MetaController:
    """A saved metacontroller, or a progress file's weights in the shape of the folder's saved first stage."""
    if not Path(checkpoint).name.startswith(PROGRESS_PREFIX):
        return MetaController.init_and_load(run_dir / checkpoint).eval()
    meta = MetaController.init_and_load(run_dir / 'discover' / 'first_stage_meta_controller.pt')
    meta.load_state_dict(torch.load(run_dir / checkpoint, map_location = 'cpu', weights_only = True)['module'])
    return meta.eval()


def main():
    parser = argparse.ArgumentParser(description = __doc__.split('\n\n')[0])
    parser.add_argument('runs', nargs = '+', help = 'LABEL=RUN_DIR[:CHECKPOINT]: pinpad run folders (the metacontroller checkpoint '
                                                   'relative to the folder; default discover/meta_controller.pt)')
    parser.add_argument('--seed', type = int, default = 0, help = 'seeds the posterior draws')
    parser.add_argument('--threads', type = int, default = 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    events = pinpad_adapter().events
    for label, spec in (run.split('=', 1) for run in args.runs):
        run_dir, _, checkpoint = spec.partition(':')
        run_dir = Path(run_dir)
        model = Transformer.init_and_load(run_dir / 'pretrain' / 'model.pt').eval()
        meta = load_meta_controller(run_dir, checkpoint or 'discover/meta_controller.pt')
        torch.manual_seed(args.seed)
        own = discover.analyse(model, meta, data.load(run_dir / 'data', 'discovery').head(SURPRISE_EPISODES), 'cpu').summary()
        held = discover.analyse(model, meta, data.load(run_dir / 'data', 'heldout'), 'cpu', events = events).summary()
        print(f"{label:28s} switch surprise {own['switch_surprise']:.2f}, contrast {own['switch_contrast']:.2f}, "
              f"{own['switches_per_episode']:.2f} switches per episode "
              f"(discovery episodes); held out: surprise {held['switch_surprise']:.2f}, switch F1 {held['switch_f1']:.3f}, "
              f"against first colours {held['inner_event_switch_f1']:.3f}, {held['switches_per_subgoal']:.2f} per subgoal", flush = True)


if __name__ == '__main__':
    main()
