"""The eight phases. Each takes the run and returns its metrics; files go under
the run folder (see `Run`), and a phase reads only files earlier phases wrote.

With several processes, the training phases (`SHARDED`) run on every rank,
data parallel, and only rank 0 writes their files; the others run on rank 0 alone."""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from loguru import logger

from metacontroller import MetaController, Transformer
from metacontroller.checkpoint import Checkpointable
from metacontroller.demos import DemoDataset
from metacontroller.distributed import SINGLE, Process
from metacontroller.pipeline import codebook, control, data, discover, pretrain, probe, report, rl_phase, steering
from metacontroller.pipeline.adapter import EnvAdapter
from metacontroller.pipeline.config import DiscoveryConfig, PipelineConfig
from metacontroller.pipeline.files import read_json, write_json
from metacontroller.pipeline.models import build_meta_controller, build_transformer
from metacontroller.rl import evaluate
from metacontroller.rl.seeds import rank_seed, seeded
from metacontroller.subgoal_controller import SubgoalController

CODEBOOK_EPISODES = 2_000      # discovery episodes whose held codes k-means reads for --rl.codebook
SURPRISE_EPISODES = 1_024      # discovery episodes the pick among starts (`pick_start`) reads switch_contrast on
# a start that switches (after step 0) less often than this per episode ranks last: its switch_contrast rests on a
# handful of switches (one start here scored 0.46 on 1 switch in 1,024 episodes, 1.89 under other posterior draws)
MIN_SWITCHES_PER_EPISODE = 0.1
RESTART_SEED_STRIDE = 1_000    # start r of a pick seeds its draws with the run's seed + r * this
PROGRESS_PREFIX = 'progress_'   # <phase>/progress_<run>.pt: a run's progress (every training loop), kept until --force redoes the phase


@dataclass
class Run:
    run_dir: Path
    config: PipelineConfig
    adapter: EnvAdapter
    seed: int = 0
    device: str = 'cpu'
    progress: bool = True
    process: Process = SINGLE

    @property
    def data_dir(self) -> Path:
        return self.run_dir / 'data'

    def path(self, phase: str, name: str) -> Path:
        return self.run_dir / phase / name

    def progress_path(self, phase: str, name: str) -> Path:
        """Where a phase keeps the progress of an unfinished run, to go on from it when the phase runs again."""
        return self.path(phase, f'{PROGRESS_PREFIX}{name}.pt')

    def clear_progress(self, phase: str):
        """Start the phase afresh (--force): drop the progress its earlier runs left."""
        for path in (self.run_dir / phase).glob(f'{PROGRESS_PREFIX}*.pt'):
            path.unlink()

    def record_path(self, phase: str) -> Path:
        return self.run_dir / 'phases' / f'{phase}.json'

    def record(self, phase: str) -> dict:
        return read_json(self.record_path(phase))

    def load_model(self) -> Transformer:
        return Transformer.init_and_load(self.path('pretrain', 'model.pt')).to(self.device).eval()

    def load_meta_controller(self) -> MetaController:
        return MetaController.init_and_load(self.path('discover', 'meta_controller.pt')).to(self.device).eval()

    def save(self, module, phase: str, name: str):
        """A checkpoint of a phase; rank 0 writes it, the other ranks hold the same weights."""
        if self.process.is_main:
            module.save(self.path(phase, name))


def run_data(run: Run) -> dict:
    return data.generate(run.adapter, run.config.data, run.seed, run.data_dir)


def load_matching(path: str, fresh: Checkpointable, flag: str, settings: str) -> Checkpointable:
    """`fresh` with the weights of the checkpoint at `path`, which must have its tensor shapes. The run's
    settings build the module, so one that changes no shape (e.g. the Gumbel switch) is the run's, as recorded."""
    weights = type(fresh).init_and_load(path).state_dict()
    given, expected = ({k: tuple(v.shape) for k, v in d.items()} for d in (weights, fresh.state_dict()))
    if given != expected:
        differ = sorted(k for k in given.keys() | expected.keys() if given.get(k) != expected.get(k))
        raise ValueError(f'{flag} {path}: its model does not have the shape the {settings} settings describe '
                         f'({len(differ)} tensors differ, e.g. {differ[:3]}); pass the settings it was trained with')
    fresh.load_state_dict(weights)
    return fresh


def initial_model(run: Run) -> Transformer:
    """A fresh base model, or the checkpoint `--pretrain.init` names (e.g. pretrained on a GPU elsewhere),
    which must have the shape the model settings describe (they set the cut and the reports)."""
    fresh = build_transformer(run.adapter, run.config.model, next_event_head = run.config.pretrain.next_event_weight > 0)
    path = run.config.pretrain.init
    if not path:
        return fresh
    model = load_matching(path, fresh, '--pretrain.init', '--model.* and --pretrain.next_event_weight')
    logger.info(f'base model from {path}; {run.config.pretrain.steps} more pretraining steps')
    return model


def initial_meta_controller(run: Run, dim_model: int, config: DiscoveryConfig | None = None,
                            start: MetaController | None = None) -> MetaController:
    """A metacontroller with `config`'s settings (the run's discovery settings by default): a copy of `start`'s
    weights (a first stage's), else of the checkpoint `--discovery.init` names, else fresh. Each α starts from it."""
    config = config or run.config.discovery
    fresh = build_meta_controller(dim_model, config)
    if start is not None:
        fresh.load_state_dict(start.state_dict())   # the same sizes: only settings that change no shape differ
        return fresh
    return load_matching(config.init, fresh, '--discovery.init', '--discovery.*') if config.init else fresh


def first_stage(run: Run, model: Transformer, streams: list, data_sha256: str, demos: DemoDataset,
                heldout: DemoDataset) -> tuple[MetaController | None, dict]:
    """--discovery.first_stage_steps: the paper's objective alone at --discovery.first_stage_alpha, saved and
    summarised on the `heldout` episodes; (None, {}) without it. With --discovery.first_stage_restarts it goes on
    from the best of several starts (`pick_start`)."""
    if not run.config.discovery.first_stage_steps:
        return None, {}
    config = run.config.discovery.first_stage()
    several = config.first_stage_restarts > 1

    def train(start: int, seed: int, steps: int, modules: Modules) -> list:
        name = f'first_stage_start_{start}' if several else 'first_stage'
        return discover.train(model, modules[0], streams, config.alpha, replace(config, steps = steps), seed, run.progress, run.process,
                              progress_file = run.progress_path('discover', name), data_sha256 = data_sha256)

    def build() -> Modules:
        return initial_meta_controller(run, model.dim, config).to(run.device), None

    stop = StopRule(config.first_stage_stop_contrast or math.inf, config.first_stage_stop_switches)
    (meta, _), trace, seed, picked = train_best_start(run, model, demos, config.first_stage_restarts, config.first_stage_restart_steps,
                                                      config.steps, 'first stage', build, train, stop)
    run.save(meta, 'discover', 'first_stage_meta_controller.pt')
    summary = discover.analyse(model, meta, heldout, run.device, events = run.adapter.events).summary()
    summary.update(alpha = config.alpha, steps = config.steps, seed = seed, final_train_action_nll = float(np.mean(trace[-50:], axis = 0)[0]))
    logger.info('discovery, first stage: ' + ', '.join(f'{k} {v:.3f}' for k, v in summary.items()))
    return meta.eval(), dict(summary, **picked)


Modules = tuple[MetaController, torch.nn.Module | None]   # a metacontroller and a head trained beside it (None without)


@dataclass(frozen = True)
class StopRule:
    """When a start ends the search among starts (not the paper): it ranks at `contrast` or above (`start_rank`) and
    switches at least `switches` times per episode, the first step counted. The count is there because the contrast
    alone cannot tell a start on every boundary with some extra switches from one on half the boundaries."""
    contrast: float = math.inf
    switches: float = 0.

    def __call__(self, start: dict) -> bool:
        return start_rank(start) >= self.contrast and start['switches_per_episode'] >= self.switches

    def record(self) -> dict:
        """The rule as results.json keeps it ({} where it never stops)."""
        if not math.isfinite(self.contrast):
            return {}
        return dict(stop_contrast = self.contrast, **(dict(stop_switches = self.switches) if self.switches else {}))


def train_best_start(run: Run, model: Transformer, demos: DemoDataset, count: int, pick_steps: int, steps: int, label: str,
                     build: Callable[[], Modules], train: Callable[[int, int, int, Modules], list],
                     stop: StopRule = StopRule()) -> tuple[Modules, list, int, dict]:
    """`train(start, seed, steps, modules)` on `build()`'s modules to `steps`, from the run's own start, or with
    `count` > 1 from the best of up to `count` starts trained `pick_steps` each (`pick_start`). Returns (the modules,
    the trace, the seed, the starts' table: {} with one start)."""
    if count == 1:
        modules = build()
        return modules, train(0, run.seed, steps, modules), run.seed, {}
    best, weights, picked = pick_start(run, model, demos, count, pick_steps, label, build, train, stop)
    modules = build()
    for module, state in zip(modules, weights, strict = True):
        if module is not None:
            module.load_state_dict(state)   # the picked start's first weights: the progress it goes on from names them
    seed = picked['restarts'][best]['seed']
    return modules, train(best, seed, steps, modules), seed, picked


def pick_start(run: Run, model: Transformer, demos: DemoDataset, count: int, steps: int, label: str,
               build: Callable[[], Modules], train: Callable[[int, int, int, Modules], list],
               stop: StopRule = StopRule()) -> tuple[int, list, dict]:
    """Several starts of one training (not the paper): start r draws its first weights and batch draws from seed
    s + r·stride (r = 0: the run's own start, as with one) and trains `steps`; the start whose switches fall where the
    base is most surprised by the next action, and not where it is not, goes on (`start_rank`: `switch_contrast` on
    the discovery episodes, read without labels). On pinpad the paper's objective is nearly indifferent to where one
    switch per subgoal falls (on the boundaries, or on each pair's first colour, where the base already knows the next
    step), and a first stage keeps the place it first takes; a second stage from the boundaries keeps them or loses
    them within a few hundred steps, by its draws. A start that meets `stop` ends the search early and goes on (the
    boundary starts are rare). Returns (the picked start, its first weights, the starts' table, which holds the starts
    that ran)."""
    episodes = demos.head(SURPRISE_EPISODES)
    starts, table = [], []
    for start in range(count):
        seed = run.seed + start * RESTART_SEED_STRIDE
        with seeded(None if start == 0 else rank_seed(seed, run.process.rank), torch.device(run.device)):
            modules = build()
            starts.append([None if module is None else copy.deepcopy(module.state_dict()) for module in modules])
            train(start, seed, steps, modules)
        with seeded(seed, torch.device(run.device)):   # the scoring draws leave the run's own stream as a run with one start has it
            summary = discover.analyse(model, modules[0], episodes, run.device).summary()
        table.append({'seed': seed, **{key: summary[key] for key in ('switch_contrast', 'switch_surprise', 'switches_per_episode',
                                                                     'action_nll', 'kl')}})
        logger.info(f'discovery, {label} start {start} (seed {seed}, {steps} steps): ' +
                    ', '.join(f'{k} {v:.3f}' for k, v in table[-1].items() if k != 'seed'))
        # rank 0's scores decide, as in the pick, so that every rank stops after the same start
        if run.process.broadcast_object(stop(table[-1])):
            switches = f' with at least {stop.switches:g} switches per episode' if stop.switches else ''
            logger.info(f'discovery, {label}: start {start} reaches the switch contrast {stop.contrast:g}{switches}; '
                        'it goes on, no more starts')
            best = start
            break
    else:
        # ties to the earlier start; each rank drew its own posterior samples, so rank 0's pick is everyone's
        best = run.process.broadcast_object(max(range(len(table)), key = lambda r: (start_rank(table[r]), -r)))
        logger.info(f'discovery, {label}: start {best} (seed {table[best]["seed"]}) goes on, the highest switch contrast')
    return best, starts[best], dict(restarts = table, restart = best, restart_steps = steps, **stop.record())


def start_rank(start: dict) -> float:
    """A start's rank in the pick (its row of the starts' table): its switch contrast, or -inf where it switches too
    rarely to read one from (no switch after the first step: nan)."""
    contrast, switches = start['switch_contrast'], start['switches_per_episode'] - 1   # less the forced switch at step 0
    return -math.inf if math.isnan(contrast) or switches < MIN_SWITCHES_PER_EPISODE else contrast


def run_pretrain(run: Run) -> dict:
    config = run.config.pretrain
    model = initial_model(run).to(run.device)
    logger.info(f'base model: {sum(p.numel() for p in model.parameters()):,} parameters')
    events = run.adapter.event_targets(config.next_event_weight > 0)
    trace = pretrain.train(model, data.load(run.data_dir, 'pretrain'), config, run.seed, run.device, run.progress, run.process,
                           progress_file = run.progress_path('pretrain', 'pretrain'), event_targets = events)
    run.save(model, 'pretrain', 'model.pt')

    heldout = data.load(run.data_dir, 'heldout')
    sets = run.adapter.expert_action_sets
    metrics = pretrain.imitation_metrics(model, heldout, run.device, action_sets = sets(heldout) if sets is not None else None)
    if events is not None:
        metrics.update(pretrain.next_event_metrics(model, heldout, events, run.device))
    for name, tasks in (('pretraining_tasks', run.adapter.pretraining_tasks), ('post_task', (run.adapter.post_task,))):
        stats = evaluate(model, run.adapter.make_envs(tasks), config.eval_episodes, seed = run.seed, process = run.process)
        metrics[f'success_{name}'] = stats.success
    final = float(np.mean(trace[-50:])) if trace else None   # None: an --pretrain.init model used as is (0 steps)
    return dict(metrics, final_train_action_nll = final, success_policy = 'sampled', eval_episodes = config.eval_episodes, init = config.init)


def run_probe(run: Run) -> dict:
    model = run.load_model()
    train = probe.layer_features(model, data.load(run.data_dir, 'discovery').head(run.config.probe.train_episodes), run.device)
    test = probe.layer_features(model, data.load(run.data_dir, 'heldout'), run.device)
    accuracy = probe.fit_and_score(train, test, run.adapter.num_subgoals, run.config.probe, run.seed, run.progress)
    majority = torch.bincount(test[1], minlength = run.adapter.num_subgoals).max().item() / len(test[1])
    return dict(accuracy_by_layer = accuracy, best_layer = max(range(len(accuracy)), key = accuracy.__getitem__),
                cut_layer = run.config.model.depth // 2, chance = 1 / run.adapter.num_subgoals, majority_class = majority)


def run_control(run: Run) -> dict:
    """Ground-truth subgoal controllers (paper Fig. 4): held-out scores with and without them, and
    success when the live environment's subgoal switches them, beside the base on the same episodes."""
    config = run.config.control
    model = run.load_model()
    demos = data.load(run.data_dir, 'discovery')
    streams = discover.precompute(model, demos, config.batch_size, run.seed, run.device, run.process)
    controller = SubgoalController(model.dim, run.adapter.num_subgoals, config.dim_hypernetwork_hidden, config.low_rank).to(run.device)
    trace = control.train(model, controller, streams, config, run.seed, run.progress, run.process,
                          progress_file = run.progress_path('control', 'controllers'), data_sha256 = demos.fingerprint())
    run.save(controller, 'control', 'controller.pt')

    scores, success = control.score(model, controller, run.adapter, data.load(run.data_dir, 'heldout'), config.eval_episodes,
                                    run.seed, run.device, run.process)
    for name, by_kind in success.items():
        logger.info(f'control, {name}: success {by_kind["controlled"]["success"]:.3f} with ground-truth controllers, '
                    f'{by_kind["base"]["success"]:.3f} without (sampled actions; greedy: '
                    f'{by_kind["controlled_greedy"]["success"]:.3f}, {by_kind["base_greedy"]["success"]:.3f})')
    return dict(heldout = scores, **success, final_train_action_nll = float(np.mean(trace[-50:])), layer = run.config.model.depth // 2,
                rank = config.low_rank, eval_episodes = config.eval_episodes, success_policy = 'sampled')


def run_discover(run: Run) -> dict:
    config = run.config.discovery
    model = run.load_model()
    demos = data.load(run.data_dir, 'discovery')
    streams = discover.precompute(model, demos, config.batch_size, run.seed, run.device, run.process)
    heldout, post = data.load(run.data_dir, 'heldout'), data.load(run.data_dir, 'post_task')

    rotations = run.adapter.episode_rotations(config.rotation_consistency)
    event_targets = run.adapter.event_targets(config.next_event_weight > 0, '--discovery.next_event_weight')
    fingerprint = demos.fingerprint()
    start, first_summary = first_stage(run, model, streams, fingerprint, demos, heldout)
    sweep, trained = [], []
    for alpha in dict.fromkeys((config.alpha, *config.sweep_alphas)):   # --discovery.alpha first, no repeats
        meta, trace, tries = train_alpha(run, model, streams, fingerprint, demos, start, alpha, rotations, event_targets)
        summary = discover.analyse(model, meta, heldout, run.device, events = run.adapter.events).summary()
        # training action NLLs (the episode's, then the turned and the cut episodes' with those flags), last 50 steps:
        # the trace's columns but the KL
        names = ['action_nll', *(name.replace('_nll', '_action_nll') for name in discover.trained_nll_names(config.cut_history, rotations is not None))]
        final = np.mean(trace[-50:], axis = 0).tolist()   # the NLLs, the KL, then the next-event CE with its head
        summary.update(zip([f'final_train_{name}' for name in names], final[:len(names)], strict = True))
        if event_targets is not None:
            summary['final_train_next_event_ce'] = final[-1]
        sweep.append(dict(alpha = alpha, **summary, **tries))
        trained.append(meta)
        logger.info(f'discovery α={alpha:g}: ' + ', '.join(f'{k} {v:.3f}' for k, v in summary.items()))

    # 'fixed' keeps --discovery.alpha; 'switch_f1' the best F1, ties to the earlier (so to --discovery.alpha)
    best = 0 if config.select_alpha == 'fixed' else max(range(len(sweep)), key = lambda i: (sweep[i]['switch_f1'], -i))
    meta, summary = trained[best], {k: v for k, v in sweep[best].items() if k != 'alpha'}
    if best:
        logger.info(f'discovery: α={sweep[best]["alpha"]:g} goes downstream (best held-out switch F1)')
    run.save(meta, 'discover', 'meta_controller.pt')
    plot_episodes = run.config.report.plot_episodes
    figures = dict(episodes = {
        f'post-training task ({run.adapter.post_task_name})': discover.episode_betas(model, meta, post, plot_episodes, run.device),
        'pretraining tasks': discover.episode_betas(model, meta, heldout, plot_episodes, run.device),
    })
    if run.process.is_main:
        write_json(run.path('discover', 'figures.json'), figures, indent = None)
    post_summary = discover.analyse(model, meta, post, run.device, events = run.adapter.events).summary()
    # with 'switch_f1' the α is picked on the held-out episodes its figures come from: they are then
    # the best of the sweep, not an unbiased estimate (alpha_sweep keeps every α's, --discovery.alpha's first)
    metrics = dict(summary, alpha = sweep[best]['alpha'], selected_by = config.select_alpha, post_task = post_summary, alpha_sweep = sweep,
                   init = config.init, first_stage = first_summary, rotation_consistency = config.rotation_consistency, cut_history = config.cut_history,
                   next_event_weight = config.next_event_weight, next_event_at = config.next_event_at)
    if run.adapter.reports_entered_subgoal and run.process.is_main:
        codes = steering.subgoal_codes(model, meta, demos, run.adapter.num_subgoals, run.device)
        metrics['steering'] = steering.steering_table(model, meta, codes, run.adapter.subgoal_names, run.adapter.make_envs(run.adapter.pretraining_tasks),
                                                      config.steering_episodes, run.seed)
        logger.info(f'steering: first subgoal entered is the injected code\'s {metrics["steering"]["hit_rate"]:.3f} of the time '
                    f'(base alone: {metrics["steering"]["base_rate"]:.3f} per subgoal)')
        tasks = [tuple(task) for task in heldout.metadata['tasks']]
        transfer = steering.code_transfer(model, meta, heldout, run.adapter.make_envs(tasks), config.steering_episodes, run.seed)
        metrics['steering']['code_transfer'] = transfer._asdict()
        logger.info(f"codes: an episode's first code sends the agent to its subgoal {transfer.own_layout:.3f} of the time in its own "
                    f"layout, {transfer.other_layout:.3f} in another's (colour codes carry, place codes do not; base alone {transfer.base:.3f})")
    return metrics


def train_alpha(run: Run, model: Transformer, streams: list, data_sha256: str, demos: DemoDataset, start: MetaController | None,
                alpha: float, rotations: Callable | None, event_targets: Callable | None) -> tuple[MetaController, list, dict]:
    """One α of the run from `start`'s weights (a first stage's, else --discovery.init's, else fresh), with a fresh
    next-event head beside it if the run has one (not saved with it): (the metacontroller, its trace, {'seed': its
    seed, with --discovery.restarts the starts' table, with a third stage its steps}); the best of the starts goes on
    (`pick_start`), then with --discovery.third_stage_steps its third stage (the trace is then the third stage's)."""
    config = run.config.discovery

    def build(weights: MetaController | None = start) -> Modules:
        meta = initial_meta_controller(run, model.dim, start = weights).to(run.device)   # first: its fresh build draws before the head's
        return meta, None if event_targets is None else torch.nn.Linear(config.dim_latent, run.adapter.num_event_classes).to(run.device)

    def train(index: int, seed: int, steps: int, modules: Modules, stage: DiscoveryConfig = config, suffix: str = '') -> list:
        meta, head = modules
        name = f'alpha_{alpha:g}' + (f'_start_{index}' if index else '') + suffix   # start 0 is the run's own
        return discover.train(model, meta, streams, alpha, replace(stage, steps = steps), seed, run.progress, run.process, rotations,
                              progress_file = run.progress_path('discover', name), data_sha256 = data_sha256,
                              next_events = None if head is None else discover.NextEvents(event_targets, head))

    (meta, _), trace, seed, picked = train_best_start(run, model, demos, config.restarts, config.restart_steps, config.steps,
                                                      f'α={alpha:g}', build, train)
    if config.third_stage_steps:   # as a separate run from these weights would: a fresh optimiser and head
        modules = build(meta)
        trace = train(picked.get('restart', 0), seed, config.third_stage_steps, modules, config.third_stage(), '_third_stage')
        meta = modules[0]
        picked = dict(picked, third_stage_steps = config.third_stage_steps)
    return meta, trace, dict(seed = seed, **picked)


def rl_meta_controller(run: Run, model: Transformer) -> tuple[MetaController, dict]:
    """The discovered metacontroller, or with --rl.codebook K its copy that chooses among K k-means centroids
    of the codes it holds on the discovery data (and the codebook's summary; empty without one)."""
    meta, rl = run.load_meta_controller(), run.config.rl
    if not rl.codebook:
        return meta, {}
    # with --rl.codebook_spread_after the policy starts exact and rl_phase.spread_in_stages adds the spread later
    spread = 0. if rl.codebook_spread_after else rl.codebook_spread
    meta, summary = codebook.fit(model, meta, data.load(run.data_dir, 'discovery').head(CODEBOOK_EPISODES), rl.codebook, run.seed,
                                 run.device, spread)
    purity = f', purity against the subgoal labels {summary["purity"]:.3f}' if 'purity' in summary else ''
    logger.info(f'action codebook: {rl.codebook} k-means centroids of {summary["codes"]} held codes; shares '
                f'{[round(v, 3) for v in summary["share"]]}, RMS std per dimension {[round(v, 3) for v in summary["spread"]]}{purity}')
    return meta, dict(codebook = summary)


def run_rl(run: Run) -> dict:
    model = run.load_model()
    meta, codes = rl_meta_controller(run, model)
    summary, trained = rl_phase.internal(model, meta, run.adapter.make_envs((run.adapter.post_task,)), run.config.rl, run.seed,
                                         run.progress, run.process, progress_file = run.progress_path('rl', 'internal'))
    run.save(trained, 'rl', 'meta_controller.pt')
    return dict(internal = dict(summary, **codes))


def run_baselines(run: Run) -> dict:
    model = run.load_model()
    meta, _ = rl_meta_controller(run, model)
    make_envs = run.adapter.make_envs((run.adapter.post_task,))
    raw, raw_model = rl_phase.raw_action(model, make_envs, run.config.rl, run.seed, run.progress, run.process,
                                         progress_file = run.progress_path('baselines', 'raw_action'))
    run.save(raw_model, 'baselines', 'raw_action_model.pt')
    beta1, beta1_meta = rl_phase.internal(model, meta, make_envs, run.config.rl, run.seed, run.progress, run.process, force_beta = 1.,
                                          progress_file = run.progress_path('baselines', 'beta1'))
    run.save(beta1_meta, 'baselines', 'beta1_meta_controller.pt')
    return dict(raw_action = raw, no_temporal_abstraction = beta1)


def gather_results(run: Run) -> dict:
    """results.json from the records of the finished phases; wall time = the phases' own, summed over resumes."""
    records = {p: run.record(p) for p in PHASES if run.record_path(p).is_file()}
    total = sum(r['wall_time_s'] for r in records.values())
    return report.results(run.config.to_dict(), run.seed, records, total)


def run_report(run: Run) -> dict:
    result = gather_results(run)
    figures = read_json(run.path('discover', 'figures.json'))
    written = report.make_plots(run.run_dir, result, figures, run.adapter.subgoal_names, 1 / run.adapter.num_subgoals,
                                run.config.model.depth // 2, run.config.report.figure_copy)
    return dict(plots = written)


PHASES = dict(data = run_data, pretrain = run_pretrain, probe = run_probe, control = run_control, discover = run_discover,
              rl = run_rl, baselines = run_baselines, report = run_report)
SHARDED = ('pretrain', 'control', 'discover', 'rl', 'baselines')   # run by every rank; the other phases by rank 0 alone

# setting -> the phases whose training loop it is the budget of: raised on a finished run, those phases
# go on from their progress (every training loop saves one, and may continue to a larger budget)
BUDGETS = {'pretrain.steps': ('pretrain',), 'control.steps': ('control',), 'discovery.steps': ('discover',),
           'rl.total_episodes': ('rl', 'baselines')}


def fixed_budgets(config: PipelineConfig) -> dict[str, str]:
    """The budgets of `BUDGETS` that `config` ties to its run folder, each with why: they cannot rise without --force."""
    # the pretrain phase's progress refuses it too (`cooldown_ends_at`); here it is refused before any phase runs
    if pretrain.cooldown_end(config.pretrain) is None:
        return {}
    return {'pretrain.steps': f'--pretrain.cooldown_steps {config.pretrain.cooldown_steps} decays the rate to 0 at the old budget, '
                              'and a longer run would have decayed later'}


# config section -> the phases that read it themselves (the phases that read their files follow from NEEDS); a setting none
# of whose readers has finished may change without --force, as nothing made under its old value is kept
SECTION_READERS = dict(model = ('pretrain',), data = ('data',), pretrain = ('pretrain',), probe = ('probe',), control = ('control',),
                       discovery = ('discover',), rl = ('rl', 'baselines'), report = ('report',))
# settings read before their section's phases: the adapter's held-out task and the way it gives the model its task shape the data
SETTING_READERS = {'rl.task': ('data',), 'model.task_condition': ('data',)}

# phase -> files it reads (relative to the run folder), each written by the named phase
NEEDS = dict(
    pretrain = {'data/pretrain.npz': 'data', 'data/heldout.npz': 'data'},
    probe = {'pretrain/model.pt': 'pretrain', 'data/discovery.npz': 'data', 'data/heldout.npz': 'data'},
    control = {'pretrain/model.pt': 'pretrain', 'data/discovery.npz': 'data', 'data/heldout.npz': 'data'},
    discover = {'pretrain/model.pt': 'pretrain', 'data/discovery.npz': 'data', 'data/heldout.npz': 'data', 'data/post_task.npz': 'data'},
    rl = {'pretrain/model.pt': 'pretrain', 'discover/meta_controller.pt': 'discover'},
    baselines = {'pretrain/model.pt': 'pretrain', 'discover/meta_controller.pt': 'discover'},
    report = {'phases/probe.json': 'probe', 'phases/discover.json': 'discover', 'discover/figures.json': 'discover'},
)
