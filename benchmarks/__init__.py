"""Speed and memory benchmarks, run from the repository root: `python -m benchmarks.<name>`.

    speed        a discovery step and a cached rollout step, against the public peer
    peer         the peer's own script at our thread count (speed --peer runs it in the peer's venv)
    pretrain     pretraining throughput, the fast paths against the plain ones
    rl           abstract-timescale rollouts and a PPO update
    distributed  data-parallel pretraining and internal RL, 1 or more processes
    pinpad       the pinpad env, its expert and demonstration generation
"""
