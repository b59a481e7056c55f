"""Searches: a sweep file's ``search:`` section, sampled by Optuna, each trial one run.

    search:
      trials: 20                 # runs in all (every trial Optuna starts counts, as in study.optimize)
      metric: val_top1           # a metrics.jsonl key; the trial's value is its best epoch
      mode: max                  # max | min
      sampler: tpe               # tpe | random (Optuna's TPESampler / RandomSampler)
      seed: 0                    # the sampler's seed (null: unseeded)
      pruner: median             # none | median | {type: median, startup_trials: 5, warmup_epochs: 0}
      params:
        optim.base_lr: {loguniform: [0.01, 1.0]}
        optim.weight_decay: {uniform: [0.0, 1.0e-4]}
        train.epochs: {int: [10, 30]}
        model.radix: {choice: [1, 2, 4]}

Trial n trains ``<root>/trial<n>`` (``trial000``, ...) with the file's ``overrides`` plus its
sampled values. The study lives in ``<root>/search.db`` (SQLite), so the same command continues
an interrupted search: trials stopped by a signal resume from their checkpoints, and new ones are
sampled until ``trials`` have run. A trial whose run failed (a crash: exit status other than 0,
3 (diverged) or a signal's) stays open in the study, as a grid sweep's failed run stays
unfinished: the next invocation launches it again with its sampled values, from its last
checkpoint. A diverged run is a result (the trial fails and is not launched again), as is a
config the pre-flight check refuses. A resumed sampler is seeded with ``seed`` plus the number of
trials so far, so it does not draw the first trials' values again.

Pruning (Optuna's MedianPruner): after every epoch with ``metric`` the trial reports it; a trial
whose value trails the median of the earlier trials at that epoch (after ``startup_trials``
trials and ``warmup_epochs`` epochs) is stopped through its normal stop path (SIGTERM: it saves
its checkpoint and exits 143), recorded as pruned and never launched again.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ..config_loader import load_config
from ..errors import ConfigError
from ..rundir import RunDir
from .plan import Run, Sweep, SweepError, format_value, override_args
from .report import best_value, is_done, read_status, run_state
from .runner import POLL_S, PROGRESS_S, record, run_sweep

SEARCH_KEYS = ("trials", "metric", "mode", "sampler", "seed", "pruner", "params")
DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")
SAMPLERS = ("tpe", "random")
PRUNERS = ("none", "median")
STUDY_FILE = "search.db"


@dataclass(frozen=True)
class SearchSpec:
    """A parsed ``search:`` section (see the module docstring); ``params``: dotted key -> (distribution, values)."""

    trials: int
    params: dict
    metric: str = "val_top1"
    mode: str = "max"
    sampler: str = "tpe"
    seed: int | None = 0
    pruner: str = "none"
    startup_trials: int = 5  # MedianPruner's n_startup_trials (Optuna's default)
    warmup_epochs: int = 0  # MedianPruner's n_warmup_steps, in epochs (Optuna's default)
    overrides: dict = field(default_factory=dict)  # the sweep file's fixed overrides (dotted), under every trial


def _optuna():
    try:
        import optuna
    except ImportError:
        raise SweepError(
            "A sweep file with 'search:' needs Optuna: pip install optuna (requirements.txt pins the tested version)."
        ) from None
    return optuna


def _number(value, where: str, integer: bool = False) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value):
        raise SweepError(f"{where} must be {'a whole number' if integer else 'a number'}, got {value!r}.")
    return value


def parse_param(key: str, spec, where: str) -> tuple[str, list]:
    """``{loguniform: [lo, hi]}`` -> ("loguniform", [lo, hi]); likewise uniform, int and choice.
    Raises SweepError naming the key and the fix."""
    example = f"{key}: {{loguniform: [0.01, 1.0]}} (or uniform: [lo, hi], int: [lo, hi], choice: [a, b])"
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise SweepError(f"'search: params: {key}' in {where} must be one distribution, e.g. {example}; got {spec!r}.")
    kind, values = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(values, list) or not values:
            raise SweepError(f"'search: params: {key}: choice' in {where} must be a non-empty list, got {values!r}.")
        if any(v is not None and not isinstance(v, (bool, int, float, str)) for v in values):
            raise SweepError(
                f"'search: params: {key}: choice' in {where} may hold numbers, strings, booleans and null "
                f"(Optuna's categorical values); got {values!r}. Put list-valued keys in a grid sweep."
            )
        return kind, list(values)
    if not isinstance(values, list) or len(values) != 2:
        raise SweepError(f"'search: params: {key}: {kind}' in {where} must be [low, high], got {values!r}.")
    low, high = (_number(v, f"'search: params: {key}: {kind}' in {where}", kind == "int") for v in values)
    if not low < high or (kind == "loguniform" and low <= 0):
        need = "0 < low < high" if kind == "loguniform" else "low < high"
        raise SweepError(f"'search: params: {key}: {kind}' in {where} needs {need}, got [{low}, {high}].")
    return kind, [low, high]


def flat_params(mapping, where: str, prefix: str = "") -> dict:
    """``{optim: {base_lr: {loguniform: [..]}}}`` and ``{optim.base_lr: {loguniform: [..]}}`` both
    become ``{"optim.base_lr": {"loguniform": [..]}}``: a mapping keyed by a distribution is a leaf."""
    if not isinstance(mapping, dict):
        raise SweepError(f"{where} must map config keys to distributions, got {mapping!r}.")
    out = {}
    for key, value in mapping.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and not (set(value) & set(DISTRIBUTIONS)):
            out.update(flat_params(value, where, full + "."))
        else:
            out[full] = value
    return out


def parse_search(raw, where: str) -> SearchSpec:
    """The ``search:`` mapping of sweep file ``where`` as a SearchSpec; SweepError for every mistake."""
    if not isinstance(raw, dict):
        raise SweepError(f"'search' in {where} must be a mapping (trials:, params:, ...), got {raw!r}.")
    unknown = [k for k in raw if k not in SEARCH_KEYS]
    if unknown:
        raise SweepError(f"'search' in {where} has unknown key(s) {unknown}; it may hold {', '.join(SEARCH_KEYS)}.")
    trials = raw.get("trials")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise SweepError(f"'search: trials' in {where} must be the number of runs (>= 1), got {trials!r}.")
    params = flat_params(raw.get("params") or {}, f"'search: params' in {where}")
    if not params:
        raise SweepError(f"'search: params' in {where} must name the config keys to search, e.g. optim.base_lr.")
    if "output.dir" in params:
        raise SweepError(f"'search: params' in {where} may not set output.dir: each trial writes to <root>/trial<n>.")
    parsed = {key: parse_param(key, spec, where) for key, spec in params.items()}
    metric, mode = raw.get("metric", "val_top1"), raw.get("mode", "max")
    if not isinstance(metric, str) or not metric:
        raise SweepError(f"'search: metric' in {where} must be a metrics.jsonl key such as val_top1, got {metric!r}.")
    for key, value, choices in (("mode", mode, ("max", "min")), ("sampler", raw.get("sampler", "tpe"), SAMPLERS)):
        if value not in choices:
            raise SweepError(f"'search: {key}' in {where} must be one of {', '.join(choices)}, got {value!r}.")
    seed = raw.get("seed", 0)
    if seed is not None:
        _number(seed, f"'search: seed' in {where}", integer=True)
    pruner = raw.get("pruner", "none")
    options = {}
    if isinstance(pruner, dict):
        options = dict(pruner)
        pruner = options.pop("type", None)
    if pruner not in PRUNERS or any(k not in ("startup_trials", "warmup_epochs") for k in options):
        raise SweepError(
            f"'search: pruner' in {where} must be none, median or {{type: median, startup_trials: 5, "
            f"warmup_epochs: 0}}; got {raw.get('pruner')!r}."
        )
    for key, value in options.items():
        if _number(value, f"'search: pruner: {key}' in {where}", integer=True) < 0:
            raise SweepError(f"'search: pruner: {key}' in {where} must be 0 or more, got {value}.")
    return SearchSpec(
        trials=trials,
        params=parsed,
        metric=metric,
        mode=mode,
        sampler=raw.get("sampler", "tpe"),
        seed=seed,
        pruner=pruner,
        **options,
    )


def trial_name(number: int) -> str:
    """Trial ``number``'s run name: ``trial000``, ``trial001``, ..."""
    return f"trial{number:03d}"


def trial_run(sweep: Sweep, number: int, params: dict) -> Run:
    """The run of trial ``number``: the sweep's overrides, then the sampled ``params``, in ``<root>/trial<n>``."""
    name = trial_name(number)
    out_dir = os.path.join(sweep.root, name)
    base = {k: v for k, v in sweep.search.overrides.items() if k != "output.dir"}
    return Run(name=name, output_dir=out_dir, overrides={**base, **params, "output.dir": out_dir}, varying=dict(params))


def study_url(root: str) -> str:
    """The study's storage: ``<root>/search.db`` as an SQLAlchemy SQLite URL."""
    return "sqlite:///" + os.path.abspath(os.path.join(root, STUDY_FILE))


def load_search(spec: dict, path: str, name: str, config: str, root: str, launch: dict, slurm: dict) -> Sweep:
    """The Sweep of a search file: its runs are the study's trials so far (none before it starts)."""
    for key in ("grid", "runs"):
        if spec.get(key):
            raise SweepError(
                f"{path} has both 'search:' and '{key}:'; a search samples its runs. "
                "Put fixed settings under 'overrides:'."
            )
    search = replace(parse_search(spec["search"], path), overrides=dict(spec.get("overrides") or {}))
    sweep = Sweep(
        name=name,
        file=path,
        config=config,
        root=root,
        launch=launch,
        varying_keys=list(search.params),
        metric=search.metric,
        mode=search.mode,
        slurm=slurm,
        search=search,
    )
    if os.path.isfile(os.path.join(root, STUDY_FILE)):
        study = open_study(sweep, create=False)
        sweep.runs = [trial_run(sweep, t.number, t.params) for t in study.trials if t.params]
    return sweep


def open_study(sweep: Sweep, create: bool = True):
    """The sweep's Optuna study in ``<root>/search.db``, created (with ``create``) or loaded, with its
    sampler seeded by ``seed`` + the trials it already holds, and its pruner."""
    optuna = _optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints one line per trial event
    spec = sweep.search
    url = study_url(sweep.root)
    done = 0
    if os.path.isfile(os.path.join(sweep.root, STUDY_FILE)):
        try:
            done = len(optuna.load_study(study_name=sweep.name, storage=url).trials)
        except KeyError:
            done = 0
    elif not create:
        raise SweepError(f"Search {sweep.file} has no study yet ({os.path.join(sweep.root, STUDY_FILE)}).")
    seed = None if spec.seed is None else spec.seed + done
    sampler = optuna.samplers.TPESampler(seed=seed) if spec.sampler == "tpe" else optuna.samplers.RandomSampler(seed)
    pruner = optuna.pruners.NopPruner()
    if spec.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=spec.startup_trials, n_warmup_steps=spec.warmup_epochs)
    os.makedirs(sweep.root, exist_ok=True)
    return optuna.create_study(
        storage=url,
        study_name=sweep.name,
        direction="maximize" if spec.mode == "max" else "minimize",
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )


def distributions(spec: SearchSpec) -> dict:
    """The Optuna distribution of every searched key."""
    optuna = _optuna()
    d = optuna.distributions
    out = {}
    for key, (kind, values) in spec.params.items():
        if kind == "choice":
            out[key] = d.CategoricalDistribution(values)
        elif kind == "int":
            out[key] = d.IntDistribution(values[0], values[1])
        else:
            out[key] = d.FloatDistribution(float(values[0]), float(values[1]), log=kind == "loguniform")
    return out


def check_search(sweep: Sweep) -> None:
    """Every searched key at the ends of its range (or each choice), the others at the base, through
    train.py's pre-flight check (as ``check`` does for a sweep's runs): a misspelt key or a range
    train.py refuses fails here, before any trial starts."""
    base = {k: v for k, v in sweep.search.overrides.items() if k != "output.dir"}
    points = [{}]
    for key, (_, values) in sweep.search.params.items():
        points += [{key: v} for v in values]
    for point in points:
        run = Run("check", "", {**base, **point}, point)
        try:
            load_config(sweep.config, override_args(run))
        except ConfigError as e:
            at = ", ".join(f"{k}={format_value(v)}" for k, v in point.items()) or "the base settings"
            raise SweepError(f"Search {sweep.file} at {at} has a bad config: {e}") from None


def plan_text(sweep: Sweep) -> str:
    """What --dry-run prints for a search: its space, sampler, pruner, and the trials so far."""
    spec = sweep.search
    status = read_status(sweep.root)
    pruner = "none"
    if spec.pruner == "median":
        pruner = f"median (after {spec.startup_trials} trials and {spec.warmup_epochs} epochs)"
    lines = [
        f"Search {sweep.name}: {spec.trials} trial(s) of {sweep.config} under {sweep.root}, "
        f"{spec.mode} {spec.metric}, sampler {spec.sampler} (seed {spec.seed}), pruner {pruner}",
        *(f"    {key}: {kind} {format_value(values)}" for key, (kind, values) in spec.params.items()),
        f"{len(sweep.runs)} trial(s) so far in {os.path.join(sweep.root, STUDY_FILE)}",
        *(f"    {run.name}: {run_state(run, status)}" for run in sweep.runs),
    ]
    return "\n".join(lines) + "\n"


class SearchTrials:
    """The runner's ``Source`` for a search: trials left unfinished by an earlier invocation first,
    then new ones asked from the study until ``trials`` exist; pruning while they train; each
    trial told its result when its run ends."""

    def __init__(self, sweep: Sweep, study, echo: Callable[[str], None]):
        self.sweep, self.study, self.echo = sweep, study, echo
        self.spec = sweep.search
        self.total = self.spec.trials
        self.trials: dict = {}  # run name -> optuna Trial of the runs launched by this invocation
        self.reported: dict = {}  # run name -> epochs reported to the study
        self.seen: dict = {}  # run name -> metrics.jsonl (mtime, size) at the last look
        self.resumable = [t for t in study.trials if t.state.name == "RUNNING"]

    def _add(self, run: Run) -> None:
        if all(r.name != run.name for r in self.sweep.runs):
            self.sweep.runs.append(run)
            self.sweep.runs.sort(key=lambda r: r.name)

    def next_run(self) -> tuple[int, Run] | None:
        optuna = _optuna()
        while self.resumable:
            frozen = self.resumable.pop(0)
            # Optuna has no public call that re-opens a RUNNING trial in a new process; Trial(study,
            # trial_id) is the constructor its own ask() uses.
            trial = optuna.trial.Trial(self.study, frozen._trial_id)
            run = trial_run(self.sweep, frozen.number, frozen.params)
            self._add(run)
            self.trials[run.name] = trial
            self.reported[run.name] = set(frozen.intermediate_values)
            if is_done(run, read_status(self.sweep.root)):  # it ended, but the search stopped before telling
                self.ended(run, run_state(run, read_status(self.sweep.root)))
                continue
            return frozen.number + 1, run
        while len(self.study.trials) < self.total:
            trial = self.study.ask(distributions(self.spec))
            run = trial_run(self.sweep, trial.number, trial.params)
            trial.set_user_attr("run", run.output_dir)
            self._add(run)
            self.trials[run.name] = trial
            self.reported[run.name] = set()
            try:
                load_config(self.sweep.config, override_args(run))
            except ConfigError as e:
                record(self.sweep.root, run.name, 2, 0.0)
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                self.echo(f"[{trial.number + 1}/{self.total}] {run.name}: FAILED, bad config: {e}")
                continue
            return trial.number + 1, run
        return None

    def should_stop(self, run: Run) -> bool:
        """Report the epochs ``run`` finished since the last look; True when the pruner says stop."""
        path = RunDir(run.output_dir).metrics
        try:
            stamp = (os.stat(path).st_mtime_ns, os.stat(path).st_size)
        except OSError:
            return False
        if self.seen.get(run.name) == stamp:
            return False
        self.seen[run.name] = stamp
        trial = self.trials[run.name]
        new = False
        for record_ in RunDir(run.output_dir).read_metrics():
            value, epoch = record_.get(self.spec.metric), record_.get("epoch")
            if isinstance(value, (int, float)) and isinstance(epoch, int) and epoch not in self.reported[run.name]:
                trial.report(float(value), epoch)
                self.reported[run.name].add(epoch)
                new = True
        return new and self.spec.pruner != "none" and trial.should_prune()

    def ended(self, run: Run, state: str) -> None:
        """Tell the study: finished -> its best ``metric``; pruned -> PRUNED; diverged -> FAIL;
        failed (a crash) or stopped by a signal -> nothing: the trial stays RUNNING and the next
        invocation launches it again (``next_run``), as a grid sweep relaunches a failed run."""
        optuna = _optuna()
        trial = self.trials[run.name]
        self.should_stop(run)  # report the last epochs first
        if state == "finished":
            value = best_value(RunDir(run.output_dir).read_metrics(), self.spec.metric, self.spec.mode)
            if value is None:
                self.echo(
                    f"{run.name}: no '{self.spec.metric}' in its metrics.jsonl; the trial counts as failed "
                    "(check search: metric, and that the run evaluates: train.eval_every)."
                )
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                self.study.tell(trial, value)
        elif state == "pruned":
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif state == "diverged":
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        elif state == "failed":
            self.echo(f"{run.name}: the trial stays open; running the same command again launches it again")


def run_search(
    sweep: Sweep,
    launch_sh: str | None = None,
    env: dict | None = None,
    echo: Callable[[str], None] | None = None,
    parallel: int = 1,
    gpus_per_run: int | None = None,
    progress_every: float = PROGRESS_S,
) -> int:
    """Run (or continue) the search: its trials through ``runner.run_sweep``, up to ``parallel`` at
    once; then the summary, best trial first. Exit status as ``run_sweep``'s."""
    echo = echo or (lambda text: print(text, flush=True))
    study = open_study(sweep)
    source = SearchTrials(sweep, study, echo)
    code = run_sweep(
        sweep,
        launch_sh,
        env,
        echo,
        parallel=parallel,
        gpus_per_run=gpus_per_run,
        source=source,
        progress_every=progress_every,
    )
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    if done:
        best = study.best_trial
        echo(
            f"Best trial: {trial_name(best.number)} {sweep.metric} {best.value:.4g} with "
            + ", ".join(f"{k}={format_value(v)}" for k, v in best.params.items())
        )
    return code


__all__ = ["POLL_S", "SearchSpec", "SearchTrials", "check_search", "load_search", "open_study", "run_search"]
