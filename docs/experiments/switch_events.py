"""Where do a finished run's switches fall: on the subgoal boundaries, or on the other event of each subgoal?

On pinpad every subgoal is a pair of colours, and an expert episode shows two events per subgoal: the entry of
the pair's first colour (inside the subgoal) and of its second (the boundary to the next one). Discovery can put
one switch per subgoal on either; the switch F1 sees only the second. This runs the discover phase's analysis
(`discover.analyse` with the adapter's events, which the phase now reports itself) on folders from before.

    python docs/experiments/switch_events.py runs/study/seed_0 runs/study/seed_1
"""
import argparse
from pathlib import Path

import torch

from metacontroller import MetaController, Transformer
from metacontroller.pipeline import data, discover
from metacontroller.pipeline.adapters.pinpad import pinpad_adapter


def main():
    parser = argparse.ArgumentParser(description = __doc__.split('\n\n')[0])
    parser.add_argument('run_dirs', type = Path, nargs = '+', help = 'run folders whose discover phase has run')
    parser.add_argument('--threads', type = int, default = 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    events = pinpad_adapter().events
    for run_dir in args.run_dirs:
        model = Transformer.init_and_load(run_dir / 'pretrain' / 'model.pt').eval()
        meta = MetaController.init_and_load(run_dir / 'discover' / 'meta_controller.pt').eval()
        s = discover.analyse(model, meta, data.load(run_dir / 'data', 'heldout'), 'cpu', events = events).summary()
        print(f"{run_dir}: {s['switches_per_subgoal']:.2f} switches per subgoal, {s['switches_on_events']:.3f} of them on a colour entry; "
              f"F1 against the boundaries {s['switch_f1']:.3f} (P {s['switch_precision']:.3f}, R {s['switch_recall']:.3f}), "
              f"against each pair's first colour {s['inner_event_switch_f1']:.3f} "
              f"(P {s['inner_event_switch_precision']:.3f}, R {s['inner_event_switch_recall']:.3f})")


if __name__ == '__main__':
    main()
