"""Environments. Importing this package registers them with gymnasium and
does nothing else (gymnasium >= 1.0 no longer loads plugin entry points, so
registration on import is the way to make `gymnasium.make` find them):

    import metacontroller.envs  # or: gymnasium.make('metacontroller.envs:metacontroller/Pinpad-v0')
    env = gymnasium.make('metacontroller/Pinpad-v0')
    envs = gymnasium.make_vec('metacontroller/Pinpad-v0', num_envs = 256)

Each environment's module holds the env and its rules; its expert and demonstration
generator sit beside it (`pinpad_expert`, `babyai_demos`), and so does pinpad's drawing
(`pinpad_render`). Models and the pipeline live elsewhere: nothing here imports them.
"""
import gymnasium

from metacontroller.envs.pinpad import ENV_ID, PinpadEnv, VecPinpadEnv


def register_envs() -> None:
    """Register `metacontroller/Pinpad-v0` (idempotent)."""
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(
            id = ENV_ID,
            entry_point = 'metacontroller.envs.pinpad:PinpadEnv',
            vector_entry_point = 'metacontroller.envs.pinpad:VecPinpadEnv',
        )


register_envs()

__all__ = ['ENV_ID', 'PinpadEnv', 'VecPinpadEnv', 'register_envs']
