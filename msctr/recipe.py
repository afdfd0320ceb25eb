"""Recipes: one YAML file says what data, which models, how to train and how to evaluate.

Every key is checked: an unknown or mistyped key is a one-line error naming it, and each
model's `params` are parsed into that model's hyperparameter dataclass, once, here.

A key is spelled one way everywhere (`--set`, `--vary`, errors): dotted, list items by index,
a model by its index or its label (`models.0.params.heads`, `models.HierRec.params.heads`);
`resolve_key` reads both, errors write the index.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from msctr.config import from_dict, parse_value, read_yaml
from msctr.data.schema import Schema
from msctr.errors import UserError
from msctr.models.registry import ModelParams, parse_params
from msctr.search import parse_space


@dataclass
class ModelEntry:
    name: str  # registered model name, e.g. "hierrec"
    label: str | None = None  # row name in tables and run folder (default: name)
    params: dict = field(default_factory=dict)  # as written (recipe.yaml, fingerprints)
    search: dict = field(default_factory=dict)  # this model's search space (msctr tune)

    @property
    def key(self) -> str:
        return self.label or self.name

    def parse(self, where: str) -> ModelParams:
        """`params` into the model's dataclass, checked (`Recipe.validate` does it once, as
        the recipe is read); every later use reads `model_params`."""
        self._parsed = parse_params(self.name, self.params, where)
        return self._parsed

    @property
    def model_params(self) -> ModelParams:
        """The parsed params; an entry made in code (an ablation's variant) is parsed here,
        at its first use. `params` is not changed after that."""
        parsed = getattr(self, "_parsed", None)
        return parsed if parsed is not None else self.parse("model.params")


@dataclass
class EarlyStoppingConfig:
    metric: Literal["logloss", "auc"] = "logloss"
    patience: int = 2


@dataclass
class TrainConfig:
    optimizer: Literal["adam"] = "adam"
    lr: float = 1e-3
    # the learning rate of epoch e (from 0) is lr * lr_decay**e: SFPNet's "decay rate of 0.9"
    # per epoch; 1.0 keeps it constant
    lr_decay: float = 1.0
    weight_decay: float = 0.0
    batch_size: int = 2000
    epochs: int = 10
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    seeds: list[int] = field(default_factory=lambda: [0])
    device: str = "cpu"
    threads: int | None = None  # torch intra-op threads (default: torch's choice)
    loader: Literal["memory", "stream"] = "memory"
    shuffle_buffer: int = 1_000_000  # rows, streamed loader only
    max_steps_per_epoch: int | None = None  # cap (used by --smoke)
    eval_batch_size: int = 8192
    eval_rows: int | None = None  # evaluate on the first N val/test rows only (used by --smoke)
    # embedding tables with row-sparse gradients and lazy Adam (only touched rows updated);
    # auto: for tables of at least 100k rows (docs/recipes.md, "Speed options")
    sparse_embeddings: Literal["auto"] | bool = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast matmuls, fp32 weights
    compile: bool = False  # torch.compile the model (pays a compile time per shape)
    # experiment trackers fed each epoch's figures (docs/tracking.md); results never depend on it
    log: list[Literal["tensorboard", "mlflow"]] = field(default_factory=list)

    def validate(self, where: str) -> None:
        if not self.seeds:
            raise UserError(f"{where}.seeds is empty; give at least one seed, e.g. [0]")
        twice = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        if twice:
            raise UserError(
                f"{where}.seeds lists {twice} more than once; the same seed twice is the same "
                "run, not two samples — give distinct seeds"
            )
        if any(not 0 <= s < 2**32 for s in self.seeds):
            raise UserError(f"{where}.seeds must be integers in [0, 2**32), got {self.seeds}")
        if not 0 < self.lr_decay <= 1:
            raise UserError(
                f"{where}.lr_decay must be in (0, 1] (the learning rate's factor per epoch; 1 "
                f"keeps it constant), got {self.lr_decay}"
            )
        for key in ("lr", "batch_size", "epochs", "eval_batch_size", "shuffle_buffer"):
            value = getattr(self, key)
            if not value > 0 or not math.isfinite(value):
                raise UserError(f"{where}.{key} must be a positive number, got {value}")
        for key in ("threads", "eval_rows", "max_steps_per_epoch"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise UserError(f"{where}.{key} must be at least 1 (or left out), got {value}")
        if not 0.0 <= self.weight_decay < math.inf:
            raise UserError(f"{where}.weight_decay must be >= 0, got {self.weight_decay}")
        if self.early_stopping.patience < 1:
            raise UserError(
                f"{where}.early_stopping.patience must be at least 1 (epochs without "
                f"improvement before stopping), got {self.early_stopping.patience}"
            )
        twice = sorted({k for k in self.log if self.log.count(k) > 1})
        if twice:
            raise UserError(f"{where}.log lists {twice} more than once; list each once")
        if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", self.device):
            raise UserError(f"{where}.device must be cpu, cuda, cuda:N or mps, got {self.device!r}")


# eval.baseline's value for "the best baseline of each column" (HierRec's RelaImpr)
BEST_BASELINE = "best"
TABLE_METRICS = (
    "scenario_auc", "auc", "logloss", "gauc", "sgauc", "relaimpr", "calibration", "ece", "ne",
)  # fmt: skip
# normalized entropy ranks models exactly as logloss does on one test set (the same base
# rate divides every model's), so the terminal leaves it to report.md unless asked
DEFAULT_TABLE_METRICS = tuple(m for m in TABLE_METRICS if m != "ne")


@dataclass
class EvalConfig:
    # columns of the comparison table (every metric is computed and saved regardless)
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_TABLE_METRICS))
    # RelaImpr's reference: a model label, or `best` for the best of `baselines` in each AUC
    # column (HierRec eq. 11); default: the first model
    baseline: str | None = None
    baselines: list[str] = field(default_factory=list)  # the baselines (default: every model)
    # RelaImpr's form: (AUC-0.5)/(AUC_b-0.5)-1 (HierRec) or AUC/AUC_b-1 (HMDN)
    relaimpr: Literal["auc_minus_half", "ratio"] = "auc_minus_half"
    significance: float = 0.05
    # the test behind a table's significance mark, over seeds (a single run: DeLong's test)
    test: Literal["welch", "mannwhitney"] = "welch"
    calibration_bins: int = 10  # equal-mass bins of ECE and the reliability diagram

    def validate(self, where: str) -> None:
        if isinstance(self.calibration_bins, bool) or not 1 <= self.calibration_bins <= 1000:
            raise UserError(
                f"{where}.calibration_bins is the number of equal-mass bins of ECE and the "
                f"reliability diagram, a whole number in [1, 1000], e.g. 10; got "
                f"{self.calibration_bins!r}"
            )
        unknown = [m for m in self.metrics if m not in TABLE_METRICS]
        if unknown:
            raise UserError(
                f"{where}.metrics: unknown metric(s) {unknown}; choose from {list(TABLE_METRICS)}"
            )
        for key in ("metrics", "baselines"):
            values = getattr(self, key)
            twice = sorted({v for v in values if values.count(v) > 1})
            if twice:
                raise UserError(f"{where}.{key} lists {twice} more than once; list each once")
        # a p-value threshold: at 1 or above every comparison would be marked significant
        if not 0.0 < self.significance < 1.0:
            raise UserError(
                f"{where}.significance is the p-value below which a difference is marked "
                f"significant, so it must be in (0, 1), e.g. 0.05; got {self.significance}"
            )


@dataclass
class PaperRow:
    """One row of a paper's table, as the paper reports it."""

    model: str  # the recipe's model label for this row
    name: str | None = None  # the row's name in the paper, where it differs (e.g. BaseDNN)
    auc: float | None = None
    logloss: float | None = None
    scenario_auc: list[float] = field(default_factory=list)  # in the order of `scenarios`


@dataclass
class PaperFigures:
    """What the paper reports for the table a recipe mirrors, to set beside a run of it."""

    source: str  # e.g. "SFPNet (Zhang et al., 2024), Table 4"
    dataset: str  # schema.json's info.dataset the figures belong to: "Ali-CCP", "KuaiRand"
    rows: list[PaperRow]
    fields: int | None = None  # input fields in the paper's setup, the scenario included
    scenarios: list[str] = field(default_factory=list)  # the data's scenario names, paper order
    scenario_labels: list[str] = field(default_factory=list)  # the paper's names, if others
    # the paper's data protocol in words (scenarios, split, fields, rows), shown beside the
    # run's own dataset setup so that a gap caused by the protocol reads as such
    protocol: str | None = None

    def validate(self, where: str) -> None:
        models = [r.model for r in self.rows]
        twice = sorted({m for m in models if models.count(m) > 1})
        if twice:
            raise UserError(f"{where}.rows lists {twice} more than once; one row per model")
        if self.scenario_labels and len(self.scenario_labels) != len(self.scenarios):
            raise UserError(
                f"{where}.scenario_labels has {len(self.scenario_labels)} names for "
                f"{len(self.scenarios)} scenarios; give one per scenario"
            )
        for i, r in enumerate(self.rows):
            if r.scenario_auc and len(r.scenario_auc) != len(self.scenarios):
                raise UserError(
                    f"{where}.rows.{i}.scenario_auc has {len(r.scenario_auc)} values for "
                    f"{len(self.scenarios)} scenarios ({where}.scenarios); give one per scenario"
                )


@dataclass
class Tuning:
    """What `msctr tune` did before this recipe: tuned.yaml carries it into the run, and
    report.md's Tuning section shows it, so a reader sees which budget each model got."""

    results: str  # the tune's results.json
    sampler: str  # tpe or grid
    metric: str  # the validation figure trials were ranked by
    pruner: str
    trials: int | None = None  # --trials (None: the sampler's default)
    timeout: float | None = None  # --timeout, seconds per model
    trial_epochs: int | None = None
    trial_rows: int | None = None
    # per tuned model label: trials complete / pruned / failed, best trial, value, space keys
    models: dict = field(default_factory=dict)


@dataclass
class Recipe:
    name: str
    data: str  # folder made by `msctr prepare`
    models: list[ModelEntry]
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    out: str | None = None  # run folder (default: runs/<name>)
    mirrors: str | None = None  # the paper table or figure this recipe reproduces
    paper: PaperFigures | None = None  # the paper's figures for that table (eval compares)
    prepare: str | None = None  # the `msctr prepare` command that makes `data` (papers' setup)
    description: str | None = None
    # the search space shared by every model (msctr tune, docs/tune.md); train ignores it
    search: dict = field(default_factory=dict)
    tuning: Tuning | None = None  # written by msctr tune into tuned.yaml; train ignores it

    def validate(self, where: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise UserError(
                f"recipe name {self.name!r} may hold only letters, digits, '.', '_', '-'"
            )
        if not self.models:
            raise UserError("the recipe lists no models; add `models: [{name: dnn}]`")
        keys = [m.key for m in self.models]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise UserError(f"models {dupes} appear twice; give each a distinct `label`")
        parse_space(self.search, f"{where}.search")
        for i, m in enumerate(self.models):
            m.parse(f"models.{i}.params")
            parse_space(m.search, f"{where}.models.{i}.search")
        if self.eval.baseline == BEST_BASELINE and BEST_BASELINE in keys:
            raise UserError(
                f"eval.baseline '{BEST_BASELINE}' means the best baseline of each column, but a "
                f"model is labelled '{BEST_BASELINE}' too; give that model another label"
            )
        named = [] if self.eval.baseline == BEST_BASELINE else [self.eval.baseline]
        for k in [*named, *self.eval.baselines]:
            if k is not None and k not in keys:
                raise UserError(
                    f"eval baseline '{k}' is not one of the recipe's models: {keys} "
                    f"(or eval.baseline: {BEST_BASELINE}, the best baseline of each column)"
                )
        unknown = [r.model for r in self.paper.rows if r.model not in keys] if self.paper else []
        if unknown:
            raise UserError(
                f"paper.rows names {unknown}, which are not the recipe's model labels {keys}; "
                "give each row the label of the model it stands for"
            )

    def model_index(self, ref: str, what: str) -> int:
        """The model `ref` names (an index or a label, as in `models.<ref>`); `what` is the
        option or key that named it, for the error."""
        return model_index([m.key for m in self.models], [m.name for m in self.models], ref, what)

    @property
    def run_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / self.name

    def to_dict(self) -> dict:
        # an empty `search:` (and no `tuning:`) is left out, so a recipe without one records
        # as it always did (a changed recipe.yaml would drop a run folder's results.json)
        out = asdict(self)
        for block in [out, *out["models"]]:
            if not block["search"]:
                del block["search"]
        if out["tuning"] is None:  # likewise
            del out["tuning"]
        if not out["train"]["log"]:  # likewise a recipe without trackers
            del out["train"]["log"]
        return out


def model_index(keys: list[str], names: list[str], ref: str, what: str) -> int:
    """Which of the models (their labels `keys`, registered `names`) `ref` names: an index
    (0, 1, ...), a label, or a registered name that one model alone has."""
    if ref.isdecimal():
        if int(ref) >= len(keys):
            raise UserError(
                f"{what}: the recipe has {len(keys)} model(s), models.0 to models.{len(keys) - 1}"
            )
        return int(ref)
    if ref in keys:
        return keys.index(ref)
    named = [i for i, n in enumerate(names) if n == ref]
    if len(named) == 1:
        return named[0]
    if named:
        raise UserError(
            f"{what}: {len(named)} models are {ref!r} ({', '.join(keys[i] for i in named)}); "
            "name one by its label or index"
        )
    raise UserError(f"{what}: {ref!r} is not in the recipe; its models: {', '.join(keys)}")


def resolve_key(raw: dict, key: str, what: str) -> str:
    """A recipe key as one spelling: `models.<label>...` becomes `models.<index>...` (a label
    may hold dots); every other key is returned as given. `raw` is the recipe as a dict."""
    parts = key.split(".")
    if "" in parts:
        raise UserError(f"{what}: {key!r} is not a recipe key (e.g. train.lr)")
    models = raw.get("models")
    if parts[0] != "models" or len(parts) < 2 or not isinstance(models, list):
        return key
    entries = [m if isinstance(m, dict) else {} for m in models]
    keys = [str(m.get("label") or m.get("name")) for m in entries]
    names = [str(m.get("name")) for m in entries]
    for j in range(len(parts), 1, -1):  # a number is an index, else the longest label
        if not parts[1].isdecimal() and ".".join(parts[1:j]) in keys:
            ref, rest = ".".join(parts[1:j]), parts[j:]
            break
    else:
        ref, rest = parts[1], parts[2:]
    return ".".join(["models", str(model_index(keys, names, ref, what)), *rest])


def set_key(raw: dict, key: str, value, what: str) -> str:
    """Set recipe key `key` (any spelling `resolve_key` reads) in the recipe dict `raw`;
    returns the key as resolved. A place the recipe cannot have is a one-line error."""
    path = resolve_key(raw, key, what)
    keys = path.split(".")
    node = raw
    try:
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
        if isinstance(node, list):
            node[int(keys[-1])] = value
        else:
            node[keys[-1]] = value
    except (IndexError, ValueError, TypeError, AttributeError):
        raise UserError(f"{what}: no such place in the recipe") from None
    return path


def _one_form(raw: dict) -> dict:
    """A single-model recipe's `model:` as `models:`, each model a mapping: the form keys
    resolve against."""
    if "model" in raw and "models" not in raw:  # a single-model recipe
        raw["models"] = [raw.pop("model")]
    if isinstance(raw.get("models"), list):
        raw["models"] = [{"name": m} if isinstance(m, str) else m for m in raw["models"]]
    return raw


def recipe_from_dict(raw: dict, where: str = "recipe") -> Recipe:
    return from_dict(Recipe, _one_form(copy.deepcopy(raw)), where)


def load_recipe(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), smoke: bool = False
) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe file '{path}' not found")
    raw = read_yaml(path, f"recipe '{path}'")
    if not isinstance(raw, dict):
        raise UserError(f"recipe '{path}' must be a YAML mapping (name:, data:, models:, ...)")
    raw.setdefault("name", path.stem)
    _one_form(raw)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set expects key=value (e.g. train.lr=0.002), got {item!r}")
        key, value = (t.strip() for t in item.split("=", 1))
        set_key(raw, key, parse_value(value, f"--set {key}"), f"--set {key}")
    recipe = recipe_from_dict(raw, where=path.stem)
    # a smoke run checks the recipe as written, then shrinks it: a value the real run would
    # refuse must fail a user's CI too
    return recipe_from_dict(smoke_dict(raw), where=path.stem) if smoke else recipe


def smoke_dict(raw: dict) -> dict:
    """Shrink any recipe so it runs in seconds: a few batches, one seed, small evaluation."""
    raw = copy.deepcopy(raw)
    train = raw.setdefault("train", {}) or {}
    raw["train"] = train
    train["epochs"] = 1
    train["max_steps_per_epoch"] = 5
    train["seeds"] = list(train.get("seeds") or [0])[:1]
    train["batch_size"] = min(int(train.get("batch_size", 2000)), 512)
    train["eval_rows"] = 5000
    raw["name"] = f"{raw['name']}-smoke"
    if raw.get("out"):
        raw["out"] = f"{raw['out']}-smoke"
    return raw


# -- what a (model, seed) run's results depend on --------------------------------------------

# train keys that cannot change a run's results: `seeds` only lists which runs exist (each
# seed is its own run), `log` which trackers watch them. Every other train key can change the
# numbers, `threads` included: the thread count changes how CPU kernels split their sums, so
# the same seed with another thread count is not bit-identical (docs/recipes.md, "Resuming").
NOT_RESULT_TRAIN_KEYS = ("seeds", "log")


def run_fingerprint(recipe: Recipe, entry: ModelEntry, schema: Schema) -> dict:
    """What one run of `entry` under `recipe` depends on, as plain JSON values: the prepared
    data's content (its md5 from schema.json, so a moved dataset is still the same data), the
    model and its parameters with defaults filled in, and the result-affecting train keys.
    Labels and eval keys are not in it: they cannot change a run's predictions."""
    train = {k: v for k, v in asdict(recipe.train).items() if k not in NOT_RESULT_TRAIN_KEYS}
    if train["lr_decay"] == 1.0:  # absent when constant: runs from before the key still match
        del train["lr_decay"]
    fp = {
        "data": schema.info.get("prepared_md5", "unknown"),
        "model": entry.name,
        "params": asdict(entry.model_params),
        "train": train,
    }
    return json.loads(json.dumps(fp))  # tuples as lists: equal to what is read back


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def fingerprint_change(
    old: dict, new: dict, label: str, parts: tuple[str, ...] = ("data", "model", "params", "train")
) -> tuple[str, object, object] | None:
    """The first result-affecting key that differs between two run fingerprints, as
    (recipe key, old value, new value); None when they agree on `parts`."""
    a = _flat({k: v for k, v in old.items() if k in parts})
    b = _flat({k: v for k, v in new.items() if k in parts})
    for key in [*a, *(k for k in b if k not in a)]:
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            if key == "data":
                name = "data (the prepared dataset's content, prepared_md5 in schema.json)"
            elif key == "model":
                name = f"the model of '{label}'"
            elif key.startswith("params."):
                name = f"'{label}' {key}"
            else:
                name = key
            return name, a.get(key, "<absent>"), b.get(key, "<absent>")
    return None
