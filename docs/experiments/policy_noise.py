"""Whose noise costs the success: the internal-RL policy's or the base model's? (issue 15)

A trained internal-RL policy acts by sampling a latent z ~ N(μ, σ²) at each decision, and the
frozen base then samples each raw action from its own softmax. The headline success samples both,
as in training (the paper's Algorithm 1). This re-runs the final evaluation of finished run
folders, on the same fresh episodes, under the four combinations of sampled or greedy latent (the
policy's mean μ) and sampled or greedy (argmax) raw action, with the pipeline's own `final_success`
(the `rl` phase records the same table, `success_by_policy`, in runs made since it was added). The
ground-truth controllers' `control` phase reports sampled and greedy actions likewise: compare
like with like.

    python docs/experiments/policy_noise.py runs/study/r03_ABC300k runs/study/r03_ABC300k_s1
"""
import argparse
import json
from pathlib import Path

import torch

from metacontroller import MetaController, Transformer
from metacontroller.pipeline.adapters.pinpad import pinpad_adapter
from metacontroller.pipeline.config import from_dict
from metacontroller.pipeline.rl_phase import final_success


def reevaluate(run_dir: Path) -> dict:
    record = json.loads((run_dir / 'config.json').read_text())
    config, seed = from_dict(record['config']), record['seed']
    adapter = pinpad_adapter().with_post_task(config.rl.task).with_task_condition(config.model.task_condition)
    model = Transformer.init_and_load(run_dir / 'pretrain' / 'model.pt').eval()
    meta = MetaController.init_and_load(run_dir / 'rl' / 'meta_controller.pt').eval()
    return final_success(model, adapter.make_envs((adapter.post_task,)), config.rl, seed, meta)['success_by_policy']


def main():
    parser = argparse.ArgumentParser(description = __doc__.split('\n')[0])
    parser.add_argument('run_dirs', nargs = '+', type = Path, help = 'pinpad run folders whose rl phase has run')
    parser.add_argument('--threads', type = int, default = 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for run_dir in args.run_dirs:
        if not (run_dir / 'rl' / 'meta_controller.pt').exists():
            raise SystemExit(f'{run_dir}: expected rl/meta_controller.pt (run the rl phase first)')
        print(run_dir.name, ', '.join(f'{name} {success:.3f}' for name, success in reevaluate(run_dir).items()), flush = True)


if __name__ == '__main__':
    main()
