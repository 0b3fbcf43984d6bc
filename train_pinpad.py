"""The paper's gridworld-pinpad experiment end to end (SPEC §5, §7).

    python train_pinpad.py                    # default CPU preset → runs/pinpad/default
    python train_pinpad.py --preset smoke     # a < 3-minute check of every phase
    python train_pinpad.py --preset paper --device cuda
    python train_pinpad.py --phases discover,rl --discovery.alpha 0.3 --force
    python train_pinpad.py --seeds 3          # median and quartiles over seeds
    torchrun --nproc_per_node 4 train_pinpad.py --preset paper --device cuda   # 4 GPUs, data parallel

See `python train_pinpad.py --help` for every size and budget.
"""
from metacontroller.pipeline.adapters.pinpad import pinpad_adapter
from metacontroller.pipeline.cli import run_cli

if __name__ == '__main__':
    run_cli(pinpad_adapter())
