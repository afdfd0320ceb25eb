"""The prepared dataset's schema (`schema.json`): what every later step reads.

Prepared columns (all integer-coded, written by `msctr.data.prepare`):
- ``label``: int8 in {0, 1}
- ``scenario``: int32 in [0, num_scenarios)
- one int32 column per sparse field; id 0 is the reserved out-of-vocabulary id
- one float32 column per dense field, standardized with training-split statistics
- per sequence: one fixed-size list<int32> column per attribute (0-padded, most
  recent first) and an int32 length column
- ``_user``, ``_session`` (int64 group keys), ``_partition`` (int32), and on
  planted-signal data ``_true_prob`` (float64): evaluation only, never features
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from msctr.config import from_dict
from msctr.errors import UserError
from msctr.io import read_json, reading, write_json

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")
LABEL = "label"
SCENARIO = "scenario"
USER = "_user"
SESSION = "_session"
PARTITION = "_partition"
TRUE_PROB = "_true_prob"


@dataclass
class SparseField:
    name: str
    vocab_size: int  # includes the reserved OOV id 0


@dataclass
class DenseField:
    name: str
    mean: float
    std: float


@dataclass
class SequenceField:
    column: str
    shares: str  # sparse field whose vocabulary and embedding this column uses
    # the candidate's sparse field this attribute is compared with by target attention (DIN):
    # the shared field itself where the behaviors are items of the candidate's own kind
    # (synthetic, KuaiRand); on Ali-CCP a user history has its own id space and is queried by
    # the candidate item's field of the same kind (109_14 by 206, ...). None: `shares`
    query: str | None = None

    @property
    def target(self) -> str:
        """The sparse field that queries this attribute: `query`, else `shares`."""
        return self.query or self.shares


@dataclass
class Sequence:
    name: str
    max_len: int
    length_column: str
    fields: list[SequenceField]


@dataclass
class Schema:
    source: str
    num_scenarios: int
    scenario_names: list[str]
    sparse: list[SparseField]
    dense: list[DenseField] = field(default_factory=list)
    sequences: list[Sequence] = field(default_factory=list)
    partition_fields: list[str] = field(default_factory=list)
    num_partitions: int = 1
    has_user: bool = False
    has_session: bool = False
    has_true_prob: bool = False
    rows: dict[str, int] = field(default_factory=dict)
    scenario_counts: dict[str, list[int]] = field(default_factory=dict)
    scenario_clicks: dict[str, list[int]] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    version: int = SCHEMA_VERSION

    def validate(self, where: str) -> None:
        """What the models and metrics rely on beyond the types: sizes at least 1, one name
        and one count per scenario, sequences sharing a sparse field's vocabulary."""
        counts = {"num_scenarios": self.num_scenarios, "num_partitions": self.num_partitions}
        counts |= {f"sparse '{f.name}' vocab_size": f.vocab_size for f in self.sparse}
        counts |= {f"sequence '{q.name}' max_len": q.max_len for q in self.sequences}
        for name, value in counts.items():
            if value < 1:
                raise UserError(f"{where}: {name} must be at least 1, got {value}")
        if len(self.scenario_names) != self.num_scenarios:
            raise UserError(
                f"{where}: {len(self.scenario_names)} scenario_names for num_scenarios "
                f"{self.num_scenarios}"
            )
        for table in (self.scenario_counts, self.scenario_clicks):
            for split, values in table.items():
                if len(values) != self.num_scenarios:
                    raise UserError(
                        f"{where}: {len(values)} per-scenario counts for the {split} split, "
                        f"num_scenarios is {self.num_scenarios}"
                    )
        for f in self.dense:
            if not f.std > 0:
                raise UserError(f"{where}: dense '{f.name}' std must be positive, got {f.std}")
        for q in self.sequences:
            for sf in q.fields:
                for role, name in (("shares", sf.shares), ("is queried by", sf.query)):
                    if name is not None and name not in self.sparse_names:
                        raise UserError(
                            f"{where}: sequence column '{sf.column}' {role} '{name}', which "
                            "is not a sparse field"
                        )
        if self.source == "aliccp" and any(
            sf.query is None for q in self.sequences for sf in q.fields
        ):
            # prepared before the histories were queried by the candidate item: their
            # attention would read a user field and weigh behaviors alike for every candidate
            raise UserError(
                f"{where}: this Ali-CCP dataset was prepared before its behavior histories "
                "were queried by the candidate item's fields; re-run `msctr prepare aliccp`"
            )

    # -- derived views -------------------------------------------------------------
    @property
    def sparse_names(self) -> list[str]:
        return [f.name for f in self.sparse]

    @property
    def dense_names(self) -> list[str]:
        return [f.name for f in self.dense]

    def sparse_index(self, name: str) -> int:
        try:
            return self.sparse_names.index(name)
        except ValueError:
            raise UserError(
                f"field '{name}' is not a sparse field of this dataset; "
                f"choose from: {', '.join(self.sparse_names)}"
            ) from None

    # -- persistence -------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Schema:
        d = dict(d)
        d["sparse"] = [SparseField(**f) for f in d["sparse"]]
        d["dense"] = [DenseField(**f) for f in d.get("dense", [])]
        d["sequences"] = [
            Sequence(**{**s, "fields": [SequenceField(**f) for f in s["fields"]]})
            for s in d.get("sequences", [])
        ]
        return cls(**d)

    def save(self, folder: str | Path) -> None:
        write_json(Path(folder) / "schema.json", self.to_dict())

    @classmethod
    def load(cls, folder: str | Path) -> Schema:
        path = Path(folder) / "schema.json"
        if not path.is_file():
            raise UserError(
                f"no prepared dataset at '{folder}' (missing schema.json); "
                "run `msctr prepare ...` first or fix the recipe's data path"
            )
        fix = "re-run `msctr prepare` for this dataset"
        with reading(path, fix):
            d = read_json(path)
        if not isinstance(d, dict):
            raise UserError(f"'{path}' is not an msctr schema (not a JSON object); {fix}")
        if d.get("version") != SCHEMA_VERSION:
            raise UserError(
                f"{path} has schema version {d.get('version')}, this msctr reads "
                f"{SCHEMA_VERSION}; re-run `msctr prepare`"
            )
        # every key and type checked, as a recipe's are: a hand-edited schema.json with a
        # wrong type would otherwise fail deep inside training with a traceback
        try:
            return from_dict(cls, d, "schema")
        except UserError as e:
            raise UserError(f"'{path}' is not a valid msctr schema ({e}); {fix}") from None
