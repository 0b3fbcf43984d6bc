"""The paper's experiment on BabyAI sequence levels end to end (see metacontroller/envs/babyai.py).

    python train_babyai.py                    # default CPU preset → runs/babyai/default
    python train_babyai.py --preset smoke     # a < 1-minute check of every phase
    python train_babyai.py --phases discover,rl --discovery.alpha 0.3 --force
    python train_babyai.py --seeds 3          # median and quartiles over seeds

Same phases, flags, presets and outputs as train_pinpad.py; the BabyAI presets
change some data and RL budgets (metacontroller/pipeline/adapters/babyai.py), and
`--help` lists their values.
"""
from metacontroller.pipeline.adapters.babyai import babyai_adapter
from metacontroller.pipeline.cli import run_cli

if __name__ == '__main__':
    run_cli(babyai_adapter())
