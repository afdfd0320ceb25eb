"""Mutation check: plant known bugs in a copy of the repository and see whether the tests
catch them.

Each mutant is one exact text substitution in one file under msctr/ (the snippet must occur
exactly once; a snippet no longer found, or found twice, makes the mutant "stale": fix its
snippet after the code moved). For every mutant the working tree is copied to a temporary
folder (without .git, data/, runs/ and caches), the substitution is applied to the copy, and
pytest runs there with PYTHONPATH pointing at the copy (the script checks that the copy's
`msctr` is the one imported). The real working tree is never written to.

A mutant is "killed" when a test fails, "survived" when the whole suite passes (less
tests/test_mutants.py, which checks this list and fails in any mutated copy). To be quick,
each mutant first runs the test files most likely to catch it; only if those pass does the
whole suite run. The exit status is 0 only when every mutant is killed.

    python benchmarks/mutants.py                  # every mutant (baseline run first)
    python benchmarks/mutants.py --list           # names, files, stale or not
    python benchmarks/mutants.py --only loop_no_restore --only star_route_scenario0
    python benchmarks/mutants.py --only hierrec_head_weights_scenario0 --all-failures
    python benchmarks/mutants.py --jobs 2 --json mutants.json

Run before a release (docs/testing.md), not in CI: the full check takes several minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_ANYWHERE = shutil.ignore_patterns(
    ".git", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache", ".venv"
)
# the repository's own data/ and runs/ only: a pattern "data" would also drop msctr/data/, and
# an editable install of msctr elsewhere would then quietly supply that package to the copy
_ROOT_ONLY = {"data", "runs"}


def _ignore(folder: str, names: list[str]) -> set[str]:
    skip = set(_ANYWHERE(folder, names))
    if Path(folder).resolve() == ROOT:
        skip |= _ROOT_ONLY & set(names)
    return skip


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # path relative to the repository root
    original: str  # must occur exactly once in the file
    replacement: str
    bug: str  # what the substitution breaks
    tests: tuple[str, ...] = ()  # test files to try first; the whole suite decides survival


LOOP = "msctr/train/loop.py"
SEL = "tests/test_model_selection.py"
ROUTING = "tests/test_scenario_routing.py"
MECH = "tests/test_mechanisms.py"

MUTANTS = [
    # -- the training loop: model selection ---------------------------------------------------
    Mutant(
        "loop_no_restore",
        LOOP,
        "model.load_state_dict(trainee.best)",
        "model = model  # mutant",
        "the best checkpoint is not restored before the test split is scored",
        (SEL,),
    ),
    Mutant(
        "loop_select_on_test",
        LOOP,
        "val_p = trainee.score(data.val, t, world, stop)\n"
        "    # rank 0's figures decide for all, so every rank stops at the same epoch\n"
        "    val = world.on_main(\n"
        '        lambda p=val_p: {"auc": auc(data.val_labels, p), '
        '"logloss": logloss(data.val_labels, p)}\n'
        "    )",
        "val_p = trainee.score(data.test, t, world, stop)\n"
        '    _y = data.test_frame["label"].to_numpy().astype(np.int8)\n'
        '    val = {"auc": auc(_y, val_p), "logloss": logloss(_y, val_p)}',
        "early stopping reads the test split instead of validation",
        (SEL,),
    ),
    Mutant(
        "loop_val_is_test_split",
        "msctr/train/splits.py",
        'val = load_columns(folder, "val", schema, limit=t.eval_rows)',
        'val = load_columns(folder, "test", schema, limit=t.eval_rows)',
        "the 'validation' columns are the test split (selection on test, labels consistent)",
        (SEL,),
    ),
    Mutant(
        "loop_no_patience",
        LOOP,
        "return self.waited >= self.patience",
        "return self.waited >= self.patience + 10**6",
        "patience ignored: training never stops early",
        (SEL,),
    ),
    Mutant(
        "loop_logloss_maximized",
        LOOP,
        'score = val[self.metric] if self.metric == "auc" else -val[self.metric]',
        "score = val[self.metric]",
        "early stopping on logloss keeps the epoch with the highest logloss",
        (SEL,),
    ),
    Mutant(
        "loop_wait_not_reset",
        LOOP,
        "self.best_score, self.best_epoch, self.waited = score, epoch, 0",
        "self.best_score, self.best_epoch = score, epoch",
        "the patience counter is not reset by an improvement",
        (SEL,),
    ),
    # -- metrics and statistics (caught before this check existed; kept as regressions) ------
    Mutant(
        "metrics_auc_flipped",
        "msctr/evaluate/metrics.py",
        'return float(_grouped_auc(y[o], p[o], None).auc[0]) if y.size else float("nan")',
        'return 1.0 - float(_grouped_auc(y[o], p[o], None).auc[0]) if y.size else float("nan")',
        "AUC reported as 1 - AUC",
        ("tests/test_metrics.py",),
    ),
    Mutant(
        "metrics_gauc_unweighted",
        "msctr/evaluate/metrics.py",
        "value = float((g.n[used] * g.auc[used]).sum() / rows_used) if rows_used",
        "value = float(g.auc[used].mean()) if rows_used",
        "GAUC as the plain mean of group AUCs (not impression-weighted)",
        ("tests/test_metrics.py",),
    ),
    Mutant(
        "metrics_scenario_auc_shifted",
        "msctr/evaluate/metrics.py",
        "out[g.keys.astype(np.int64)] = g.auc",
        "out[(g.keys.astype(np.int64) + 1) % num_scenarios] = g.auc",
        "per-scenario AUC written under the next scenario's id",
        ("tests/test_metrics.py", "tests/test_metric_references.py"),
    ),
    Mutant(
        "stats_welch_halved",
        "msctr/evaluate/stats.py",
        "return _scipy_p(lambda: sps.ttest_ind(a, b, equal_var=False))",
        "return _scipy_p(lambda: sps.ttest_ind(a, b, equal_var=False)) / 2",
        "Welch p-value halved (one-sided)",
        ("tests/test_stats.py",),
    ),
    # -- routing by scenario -------------------------------------------------------------------
    Mutant(
        "star_route_scenario0",
        "msctr/models/star.py",
        "return groups.linear(x, w, b)",
        "return groups.linear(x, w[[0] * w.shape[0]], b[[0] * b.shape[0]])",
        "STAR's star-topology layers use scenario 0's weights for every row",
        (ROUTING, "tests/test_baselines.py"),
    ),
    Mutant(
        "mmoe_gate_scenario0",
        "msctr/models/mmoe.py",
        "gate = torch.softmax(self.gates(x, batch.scenario), dim=-1)",
        "gate = torch.softmax(self.gates(x, torch.zeros_like(batch.scenario)), dim=-1)",
        "MMoE mixes every row's experts with scenario 0's gate",
        (ROUTING, "tests/test_baselines.py"),
    ),
    Mutant(
        "shared_bottom_tower_scenario0",
        "msctr/models/shared_bottom.py",
        "return self.towers(h, batch.scenario).squeeze(-1)",
        "return self.towers(h, torch.zeros_like(batch.scenario)).squeeze(-1)",
        "Shared Bottom scores every row with scenario 0's tower",
        (ROUTING, "tests/test_baselines.py"),
    ),
    Mutant(
        "ple_gate_scenario0",
        "msctr/models/ple.py",
        "g = torch.softmax(self.scenario_gate(h_own, scenario), dim=-1)",
        "g = torch.softmax(self.scenario_gate(h_own, torch.zeros_like(scenario)), dim=-1)",
        "PLE's scenario gate of scenario 0 mixes the experts of every row",
        (ROUTING, "tests/test_baselines.py"),
    ),
    Mutant(
        "scenario_groups_narrow_scenario0",
        "msctr/models/kernels.py",
        "own = torch.arange(x.shape[0], device=x.device) * S + scenario",
        "own = torch.arange(x.shape[0], device=x.device) * S + 0 * scenario",
        "narrow per-scenario layers (gates, tower tops) read scenario 0's output for every row",
        (ROUTING, "tests/test_baselines.py"),
    ),
    # -- HierRec -------------------------------------------------------------------------------
    Mutant(
        "hierrec_head_weights_scenario0",
        "msctr/models/hierrec.py",
        "w = self._head_weights(e_s)",
        "w = self._head_weights(self.embedding.scenario_table.weight[:1].expand_as(e_s))",
        "implicit head weights ignore the scenario (scenario 0's embedding for every row)",
        (MECH, ROUTING, "tests/test_hierrec.py"),
    ),
    Mutant(
        "hierrec_head_weights_zeroed",
        "msctr/models/hierrec.py",
        "w = self._head_weights(e_s)",
        "w = self._head_weights(e_s * 0)",
        "implicit head weights computed from a zero scenario embedding",
        (MECH, ROUTING, "tests/test_hierrec.py"),
    ),
    Mutant(
        "hierrec_explicit_skipped",
        "msctr/models/hierrec.py",
        "h = self.explicit_som(h, sc).squeeze(1)  # O_explicit [B, 64]",
        "h = h + 0 * self.explicit_som(h, sc).squeeze(1)  # O_explicit [B, 64]",
        "the explicit scenario-oriented layer is computed but not used",
        ("tests/test_hierrec.py", MECH),
    ),
    # -- SFPNet --------------------------------------------------------------------------------
    Mutant(
        "sfpnet_no_field_tailoring",
        "msctr/models/sfpnet.py",
        "x_new = self.tailor_fields(x_hat, c_x)",
        "x_new = x_hat",
        "RTM's residual tailoring (Eq. 6) returns its input unchanged",
        (MECH, "tests/test_sfpnet.py"),
    ),
    Mutant(
        "sfpnet_no_behavior_context",
        "msctr/models/sfpnet.py",
        ") * c_b.unsqueeze(1)  # Eq. 7",
        ") * 0  # Eq. 7",
        "behavior tailoring (Eq. 7) ignores the aggregated context c_b",
        (MECH, "tests/test_sfpnet.py"),
    ),
    Mutant(
        "sfpnet_sam_gate_unused",
        "msctr/models/sfpnet.py",
        "X = X * A  # Eq. 4: X_hat",
        "X = X  # Eq. 4: X_hat",
        "SAM computes its gate A but does not apply it (Eq. 4)",
        (MECH, "tests/test_sfpnet.py"),
    ),
    Mutant(
        "sfpnet_dap_without_std",
        "msctr/models/sfpnet.py",
        "return torch.cat([mean, std], dim=1)",
        "return torch.cat([mean, mean], dim=1)",
        "distribution-aware pooling loses the standard deviation (Eq. 2)",
        ("tests/test_sfpnet.py", MECH),
    ),
    # -- HMDN ----------------------------------------------------------------------------------
    Mutant(
        "hmdn_no_residual",
        "msctr/models/hmdn.py",
        "r = r - e.detach()  # r_d",
        "r = r  # r_d",
        "residual quantization quantizes x_b again at every level instead of the residual",
        ("tests/test_hmdn.py", MECH),
    ),
    Mutant(
        "hmdn_gate_reads_x_b",
        "msctr/models/hmdn.py",
        "self.gate(s if self.quantizer is not None else x)",
        "self.gate(x_b if self.quantizer is not None else x)",
        "the MMoE gate reads x_b instead of the hierarchical representation s_D (Eq. 8)",
        (MECH, "tests/test_hmdn.py"),
    ),
    # -- PEPNet and AdaSparse -----------------------------------------------------------------
    Mutant(
        "pepnet_epnet_not_applied",
        "msctr/models/pepnet.py",
        "return emb * delta, delta",
        "return emb, delta",
        "EPNet computes its gate but does not scale the embeddings",
        (MECH, "tests/test_pepnet_adasparse.py"),
    ),
    Mutant(
        "pepnet_ppnet_not_applied",
        "msctr/models/pepnet.py",
        "h = h * delta",
        "h = h",
        "PPNet computes its gates but does not scale the hidden units",
        (MECH, "tests/test_pepnet_adasparse.py"),
    ),
    Mutant(
        "adasparse_factors_not_applied",
        "msctr/models/adasparse.py",
        "h = self.dropout(h * pi)",
        "h = self.dropout(h)",
        "AdaSparse computes its weighting factors but does not apply them",
        (MECH, "tests/test_pepnet_adasparse.py"),
    ),
    # -- HiNet ---------------------------------------------------------------------------------
    Mutant(
        "hinet_own_sei_scenario0",
        "msctr/models/hinet.py",
        "own = specific[torch.arange(x.shape[0], device=x.device), s]  # [B, h]",
        "own = specific[:, 0]  # [B, h]",
        "every row's own scenario-specific SEI is scenario 0's",
        ("tests/test_hinet.py", ROUTING),
    ),
    Mutant(
        "hinet_san_includes_own",
        "msctr/models/hinet.py",
        "w = w.masked_fill(nn.functional.one_hot(s, S).bool(), 0.0)",
        "w = w",
        "the SAN's transfer representation also weighs in the row's own scenario's SEI",
        ("tests/test_hinet.py", ROUTING),
    ),
    # -- HAMUR ---------------------------------------------------------------------------------
    Mutant(
        "hamur_instance_matrix_ignored",
        "msctr/models/hamur.py",
        "z = torch.bmm(z.unsqueeze(1), H.to(z.dtype)).squeeze(1)  # [B, k]",
        "z = z  # [B, k]",
        "the adapters use U_s V_s alone: the hyper-network's H(x) is computed but not applied",
        ("tests/test_hamur.py", ROUTING),
    ),
    Mutant(
        "hamur_instance_matrix_transposed",
        "msctr/models/hamur.py",
        "z = torch.bmm(z.unsqueeze(1), H.to(z.dtype)).squeeze(1)  # [B, k]",
        "z = torch.bmm(z.unsqueeze(1), H.transpose(1, 2).to(z.dtype)).squeeze(1)  # [B, k]",
        "the adapter weights are U_s H(x)^T V_s (every part still trained)",
        ("tests/test_hamur.py",),
    ),
    # -- M2M -----------------------------------------------------------------------------------
    Mutant(
        "m2m_meta_weights_scenario0",
        "msctr/models/m2m.py",
        "w, b = gen_w(knowledge).view(S, d, d), gen_b(knowledge)  # one set per scenario",
        "w, b = gen_w(knowledge[:1].expand_as(knowledge)).view(S, d, d), "
        "gen_b(knowledge[:1].expand_as(knowledge))",
        "the meta units' weights are generated from scenario 0's knowledge for every scenario",
        ("tests/test_m2m.py", ROUTING),
    ),
    Mutant(
        "m2m_attention_scenarios_misaligned",
        "msctr/models/m2m.py",
        "groups = ScenarioGroups(batch.scenario.repeat_interleave(K), self.num_scenarios)",
        "groups = ScenarioGroups(batch.scenario.repeat(K), self.num_scenarios)",
        "the meta attention's (row, expert) pairs get other rows' scenarios (repeat, not "
        "repeat_interleave)",
        ("tests/test_m2m.py", ROUTING),
    ),
    # -- SAR-Net -------------------------------------------------------------------------------
    Mutant(
        "sarnet_transform_scenario0",
        "msctr/models/sarnet.py",
        "return torch.addcmul(self.scenario_beta[s], x, self.scenario_gamma[s])",
        "return torch.addcmul(self.scenario_beta[0 * s], x, self.scenario_gamma[0 * s])",
        "the scenario-specific transform applies scenario 0's gamma and beta to every row",
        ("tests/test_sarnet.py", ROUTING),
    ),
    Mutant(
        "sarnet_debias_next_scenario",
        "msctr/models/sarnet.py",
        "parts[0] = parts[0] + self.specific_bias_net(z, groups)",
        "parts[0] = parts[0] + self.specific_bias_net(\n"
        "                    z, ScenarioGroups((groups.scenario + 1) % self.num_scenarios, "
        "self.num_scenarios)\n"
        "                )",
        "a row's specific experts are debiased by the next scenario's bias network (training)",
        ("tests/test_sarnet.py", ROUTING),
    ),
    # -- AdaptDHM ------------------------------------------------------------------------------
    Mutant(
        "adaptdhm_every_row_cluster0",
        "msctr/models/adaptdhm.py",
        "return self.similarity(u).argmax(dim=1)  # the largest coefficient's cluster",
        "return 0 * self.similarity(u).argmax(dim=1)  # the largest coefficient's cluster",
        "the routing ignores the clusters: every row runs cluster 0's network",
        ("tests/test_adaptdhm.py",),
    ),
    Mutant(
        "adaptdhm_centres_move_at_eval",
        "msctr/models/adaptdhm.py",
        "if self.training:  # the centres follow the training batches only, never at eval",
        "if True:  # the centres follow the training batches only, never at eval",
        "the cluster centres also follow the evaluation batches",
        ("tests/test_adaptdhm.py",),
    ),
    # -- M3oE ----------------------------------------------------------------------------------
    Mutant(
        "m3oe_own_domain_scenario0",
        "msctr/models/m3oe.py",
        "w = nn.functional.one_hot(s, self.D).to(out.dtype)",
        "w = nn.functional.one_hot(0 * s, self.D).to(out.dtype)",
        "the domain-level fusion weighs scenario 0's domain expert as every row's own",
        ("tests/test_m3oe.py", ROUTING),
    ),
    Mutant(
        "m3oe_fusion_weight_not_applied",
        "msctr/models/m3oe.py",
        'f = f + self.weight("b_d", out.dtype) * domain',
        'f = f + domain + 0 * self.weight("b_d", out.dtype)',
        "the module-level fusion adds the domain module unweighted (b_d computed, not applied)",
        ("tests/test_m3oe.py",),
    ),
    # -- data preparation ----------------------------------------------------------------------
    Mutant(
        "prepare_history_values_unnumbered",
        "msctr/data/prepare.py",
        "[(col, q.max_len) for q in f.sequences for col, t in q.columns.items() if t == c],",
        "None,",
        "a field's vocabulary ignores the training sequences that share it: values seen only "
        "in histories all collapse into id 0",
        ("tests/test_prepare.py", "tests/test_kuairand.py"),
    ),
]


@dataclass
class Result:
    name: str
    status: str  # killed | survived | stale | error
    detail: str  # first failing test, or why stale / error
    seconds: float
    failures: list[str]


def snippet_count(m: Mutant, root: Path = ROOT) -> int:
    path = root / m.file
    return path.read_text().count(m.original) if path.is_file() else 0


def copy_tree(dest: Path) -> Path:
    tree = dest / "repo"
    shutil.copytree(ROOT, tree, ignore=_ignore)
    return tree


def env_for(tree: Path) -> dict[str, str]:
    extra = os.environ.get("PYTHONPATH")
    path = str(tree) + (os.pathsep + extra if extra else "")
    return {**os.environ, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1"}


def check_imports_copy(tree: Path) -> None:
    out = subprocess.run(
        # a subpackage too: an editable install's finder can supply one the copy lacks
        [sys.executable, "-c", "import msctr.data; print(msctr.__file__, msctr.data.__file__)"],
        cwd=tree,
        env=env_for(tree),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for path in out:
        if not Path(path).resolve().is_relative_to(tree.resolve()):
            raise RuntimeError(f"the copy at {tree} imports {path}, not the copy's")


FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.M)
# the suite's check of this list: in a mutated copy the mutant's own snippet is gone, so it
# would fail for every mutant and call each one "killed" that the real tests let through
LIST_CHECK = "tests/test_mutants.py"


def pytest(
    tree: Path, targets: list[str], stop_first: bool, timeout: float, mutated: bool = True
) -> tuple[int, list[str], str]:
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rfE", "-q"]
    if mutated:
        cmd.append(f"--ignore={LIST_CHECK}")
    # a private temp root: runs in parallel (--jobs) never share or clean each other's
    cmd.append(f"--basetemp={tree.parent / 'pytest-tmp'}")
    if stop_first:
        cmd.append("-x")
    try:
        done = subprocess.run(
            [*cmd, *targets],
            cwd=tree,
            env=env_for(tree),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return -1, [], "timeout"
    out = done.stdout + done.stderr
    return done.returncode, FAILED.findall(out), out


def run_mutant(m: Mutant | None, args: argparse.Namespace) -> Result:
    name = m.name if m else "baseline"
    start = time.perf_counter()
    if m is not None:
        n = snippet_count(m)
        if n != 1:
            why = "snippet not found" if n == 0 else f"snippet found {n} times"
            return Result(name, "stale", f"{m.file}: {why}", 0.0, [])
    with tempfile.TemporaryDirectory(prefix=f"msctr-mutant-{name}-") as tmp:
        tree = copy_tree(Path(tmp))
        if m is not None:
            target = (tree / m.file).resolve()
            assert target.is_relative_to(Path(tmp).resolve())  # never the real tree
            target.write_text(target.read_text().replace(m.original, m.replacement, 1))
        check_imports_copy(tree)
        stages = [] if args.full or m is None or not m.tests else [list(m.tests)]
        stages.append([])  # the whole suite (testpaths)
        for targets in stages:
            rc, failures, out = pytest(
                tree, targets, not args.all_failures, args.timeout, m is not None
            )
            if rc == -1:
                return Result(name, "killed", "timeout", time.perf_counter() - start, [])
            if rc in (1, 2, 3):  # tests failed, interrupted (collection error), internal error
                detail = failures[0] if failures else out.strip().splitlines()[-1][:200]
                return Result(name, "killed", detail, time.perf_counter() - start, failures)
            if rc != 0:
                tail = out.strip().splitlines()[-1:] or [""]
                return Result(name, "error", f"pytest exit {rc}: {tail[0][:200]}", 0.0, [])
    return Result(name, "survived", "every test passed", time.perf_counter() - start, [])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", default=[], metavar="NAME", help="repeatable")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--full", action="store_true", help="always run the whole suite")
    ap.add_argument(
        "--all-failures",
        action="store_true",
        help="do not stop at the first failure: list every test a mutant fails",
    )
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    ap.add_argument("--jobs", type=int, default=1, help="mutants run at once (default 1)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per pytest run")
    ap.add_argument("--json", type=Path, help="write the report here as JSON")
    args = ap.parse_args(argv)

    names = [m.name for m in MUTANTS]
    assert len(set(names)) == len(names), "duplicate mutant names"
    unknown = [n for n in args.only if n not in names]
    if unknown:
        ap.error(f"unknown mutant(s) {unknown}; see --list")
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]

    if args.list:
        for m in chosen:
            n = snippet_count(m)
            state = "ok" if n == 1 else ("stale: not found" if n == 0 else f"stale: {n} hits")
            print(f"{m.name:34} {m.file:32} {state:18} {m.bug}")
        return 0

    if not args.no_baseline:
        print("baseline (no mutant): running the whole suite ...", flush=True)
        base = run_mutant(None, argparse.Namespace(**{**vars(args), "all_failures": False}))
        if base.status != "survived":
            print(f"the unmutated suite fails ({base.detail}); fix that first", file=sys.stderr)
            return 2
        print(f"baseline passes ({base.seconds:.0f}s)", flush=True)

    def one(m: Mutant) -> Result:
        r = run_mutant(m, args)
        print(f"{r.name:34} {r.status:9} {r.seconds:6.0f}s  {r.detail}", flush=True)
        if args.all_failures and len(r.failures) > 1:
            for f in r.failures[1:]:
                print(f"{'':34} {'':9} {'':7}  {f}", flush=True)
        return r

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(one, chosen))

    counts = {s: sum(r.status == s for r in results) for s in ("killed", "survived", "stale")}
    errors = len(results) - sum(counts.values())
    print(
        f"\n{len(results)} mutants: {counts['killed']} killed, {counts['survived']} survived, "
        f"{counts['stale']} stale" + (f", {errors} error" if errors else "")
    )
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2) + "\n")
    return 0 if counts["killed"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
