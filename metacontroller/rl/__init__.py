"""Internal RL (SPEC §4): the abstract-timescale environment, PPO/GRPO and ES on the causal
policy, the raw-action and β ≡ 1 baselines, evaluation, and a rollout store."""
from metacontroller.rl.abstract_env import AbstractBatch, collect_abstract
from metacontroller.rl.config import EvalStats, RLConfig, RLResult
from metacontroller.rl.evaluate import evaluate
from metacontroller.rl.evolution import train_evolution
from metacontroller.rl.raw_action import train_raw_action_rl
from metacontroller.rl.rollout import Episodes, run_episodes
from metacontroller.rl.store import StoredRollouts, load_rollouts, save_rollouts
from metacontroller.rl.trainer import train_internal_rl

__all__ = [
    'RLConfig', 'RLResult', 'EvalStats', 'Episodes', 'AbstractBatch',
    'train_internal_rl', 'train_raw_action_rl', 'train_evolution', 'evaluate', 'collect_abstract', 'run_episodes',
    'StoredRollouts', 'save_rollouts', 'load_rollouts',
]
