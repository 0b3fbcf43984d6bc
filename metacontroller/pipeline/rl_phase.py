"""RL and baselines phases: internal RL on the post-training task, raw-action RL and
β ≡ 1 with the same episode budget (SPEC §4, §7.4), and a final evaluation of each
on fresh post-task episodes."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from metacontroller import MetaController, Transformer
from metacontroller.distributed import SINGLE, Process
from metacontroller.pipeline.config import RLPhaseConfig
from metacontroller.rl import RLConfig, RLResult, evaluate, train_internal_rl, train_raw_action_rl
from metacontroller.rl.seeds import final_eval_seed

# (greedy latent, greedy raw action) for each entry of `success_by_policy`: the policy's own noise and the
# base model's action noise, told apart on the same episodes. Greedy is the mean of a Gaussian latent (the
# most likely code otherwise) and the argmax raw action.
POLICIES = dict(sampled = (False, False), greedy = (True, True), greedy_latent = (True, False), greedy_actions = (False, True))


def final_success(model: Transformer, make_envs: Callable, config: RLPhaseConfig, seed: int,
                  meta_controller: MetaController | None = None, force_beta: float | None = None, process: Process = SINGLE,
                  intervention: Callable | None = None) -> dict:
    """The headline evaluation (`--rl.deterministic_eval`), and its success under each of `POLICIES` that applies:
    a raw-action policy has no latent, and continuous raw actions have no argmax. `intervention` (`evaluate`'s)
    scores e.g. the ground-truth controllers on the very episodes a policy of the same `seed` is scored on."""
    def run(latent: bool, actions: bool):
        return evaluate(model, make_envs, config.final_eval_episodes, meta_controller = meta_controller,
                        seed = final_eval_seed(seed), deterministic = latent, greedy_actions = actions,
                        force_beta = force_beta, batch_size = config.num_envs, process = process, intervention = intervention)

    headline = (config.deterministic_eval,) * 2
    stats = run(*headline)
    policies = {name: (latent, actions) for name, (latent, actions) in POLICIES.items()
                if (meta_controller is not None or latent == actions) and (model.action_readout.has_discrete or not actions)}
    by_policy = {name: stats.success if modes == headline else run(*modes).success for name, modes in policies.items()}
    return dict(stats._asdict(), eval_episodes = config.final_eval_episodes, eval_policy = 'greedy' if config.deterministic_eval else 'sampled',
                success_by_policy = by_policy)


def results_entry(result: RLResult, final: dict) -> dict:
    """The results.json entry of one RL run: the final success is the fresh evaluation's, the initial
    success the first training batch's (the untrained policy; the paper's Fig. A5)."""
    return dict(
        final, initial_success = result.curve[0][1], episodes = result.episodes, raw_steps = result.raw_steps,
        curve = [[episodes, success] for episodes, success in result.curve],
        eval_curve = [[episodes, stats.success] for episodes, stats in result.evals],
    )


def internal(model, meta_controller, make_envs, config: RLPhaseConfig, seed: int, progress: bool = True,
             process: Process = SINGLE, force_beta: float | None = None, progress_file: Path | None = None) -> tuple[dict, MetaController]:
    """Internal RL (force_beta None) or the β ≡ 1 baseline (force_beta 1.0); returns the summary and the trained metacontroller.
    With `progress_file`, training saves its progress there and goes on from it. With `--rl.codebook_spread_after`,
    training runs in the two stages of `spread_in_stages`."""
    run_config, kwargs = config.run_config(config.lr), dict(seed = seed, force_beta = force_beta, progress = progress, process = process,
                                                            progress_file = progress_file)
    if config.codebook_spread_after:
        result = spread_in_stages(model, meta_controller, make_envs, run_config, config.codebook_spread_after, config.codebook_spread, **kwargs)
    else:
        result = train_internal_rl(model, meta_controller, make_envs, run_config, **kwargs)
    final = final_success(model, make_envs, config, seed, result.module, force_beta, process)
    return results_entry(result, final), result.module


def exact_stage_file(progress_file: Path) -> Path:
    """Where `spread_in_stages` keeps its first stage's progress, beside the second's `progress_file`."""
    return progress_file.with_name(f'{progress_file.stem}_exact{progress_file.suffix}')


def spread_in_stages(model, meta_controller, make_envs, config: RLConfig, exact_episodes: int, spread: float,
                     progress_file: Path | None = None, **kwargs) -> RLResult:
    """Internal RL over an action codebook in two stages (not in the paper): the exact codebook policy trains
    `exact_episodes`, then its copy that draws z around the chosen centroid (`with_codebook_spread(spread)`: the
    same choices to start, a fresh optimiser) the rest of `config.total_episodes`. One record of both, the second
    stage's episodes counted after the first's. Its training episodes repeat the first stage's env seeds, as in
    the study's runs. Each stage keeps its own progress file (the first's with an `_exact` suffix), so a stopped
    run goes on and a larger budget goes to the spread."""
    first = None if progress_file is None else exact_stage_file(progress_file)
    exact = train_internal_rl(model, meta_controller.with_codebook_spread(0.), make_envs, replace(config, total_episodes = exact_episodes),
                              progress_file = first, **kwargs)
    rest = replace(config, total_episodes = config.total_episodes - exact_episodes)
    drawn = train_internal_rl(model, exact.module.with_codebook_spread(spread), make_envs, rest, progress_file = progress_file, **kwargs)

    def after(points: list, start: int) -> list:
        return [(start + x, y) for x, y in points]

    return RLResult(exact.curve + after(drawn.curve, exact.episodes), exact.evals + after(drawn.evals, exact.episodes), drawn.success,
                    exact.episodes + drawn.episodes, exact.raw_steps + drawn.raw_steps, drawn.module,
                    exact.raw_step_curve + after(drawn.raw_step_curve, exact.raw_steps))


def raw_action(model, make_envs, config: RLPhaseConfig, seed: int, progress: bool = True,
               process: Process = SINGLE, progress_file: Path | None = None) -> tuple[dict, Transformer]:
    result = train_raw_action_rl(model, make_envs, config.run_config(config.raw_action_lr), seed = seed, progress = progress,
                                 process = process, progress_file = progress_file)
    return results_entry(result, final_success(result.module, make_envs, config, seed, process = process)), result.module
