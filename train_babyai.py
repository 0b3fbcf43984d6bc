"""The paper's experiment on BabyAI sequence levels end to end (see metacontroller/envs/babyai.py).

    python train_babyai.py                    # default CPU preset → runs/babyai/default
    python train_babyai.py --preset smoke     # a < 1-minute check of every phase
    python train_babyai.py --phases discover,rl --discovery.alpha 0.3 --force
    python train_babyai.py --seeds 3          # median and quartiles over seeds

Same phases, flags, presets and outputs as train_pinpad.py; the BabyAI presets
change some data and RL budgets (metacontroller/envs/babyai_pipeline.py).
`--help` lists the pipeline's (pinpad) preset values.
"""
import sys

from loguru import logger

from metacontroller.envs.babyai_pipeline import main

if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except (FileNotFoundError, ValueError) as error:
        logger.error(str(error))
        sys.exit(2)
