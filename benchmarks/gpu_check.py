"""Issue 31's GPU check: every CUDA path of msctr run for real, in one short call.

    python3 benchmarks/gpu_check.py --device cuda --out "$OUT"            # on a GPU machine
    python3 benchmarks/gpu_check.py --device cpu --quick --out /tmp/gc    # the same path, tiny
    python3 benchmarks/gpu_check.py --device cuda --items 2,4 --out "$OUT"   # a rerun of two

On a GPU machine that cannot reach a package index, as one command line (polars, which such
images often lack, travels as wheels in the ignored folder `.whl`; docs/bench.md "GPU"):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; \\
      nvidia-smi -L; PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --device cuda --out "$OUT"

The four items of issue 31, in order, each within a time budget (`--budgets`, seconds; the
defaults add up to 8.5 minutes): a step that would start after its item's budget is spent is
skipped with a line saying so, and one still running then is stopped (SIGTERM to its process
group; msctr stops at a step boundary) and recorded as `timeout`.

1. train: the README's main job (`recipes/synthetic/table.yaml` on `msctr prepare
   synthetic`'s data) with `--set train.device=DEVICE`, and every paper recipe (and the
   Scenario-Wise benchmark's) with `--smoke` on raw files generated in the real datasets'
   formats (`msctr.testing.rawgen`) and prepared with the recipe's own `prepare:` line; each
   run also on the CPU with the same recipe and seeds (at the same time: the CPU run is the
   long one): test AUC per model side by side, with the seeds' noise where there are seeds;
2. `msctr bench-inference --device DEVICE` for the main recipe (its trained checkpoints from
   item 1) and for `recipes/kuairand/hierrec.yaml` (HierRec and its baselines: the shape of
   HierRec's Table 3) at the paper recipes' batch sizes, eager and bf16; then HierRec under
   `torch.compile` at batch 2000 (not with `--quick`);
3. `msctr train --nproc N` (torchrun; NCCL on CUDA) against one process: the same files in
   the run folder, test AUC per model within 1e-3 or not. N is the number of GPUs; with one
   GPU it says so, runs `--nproc 2` and records how it ends (it should be refused: rank 1 has
   no GPU of its own, and two processes cannot share one under NCCL); on the CPU N is 2 (gloo);
4. `benchmarks/train_throughput.py --device DEVICE`: samples/s per model in fp32 and bf16 on
   the main job's data, and the same for `recipes/kuairand/hierrec.yaml`'s models (their
   params) on its generated data, from which the whole table's training time is projected
   (full size, the recipe's seeds, 4 epochs a run as benchmarks/whole_table.py assumes;
   training steps only).

Everything measured goes to `--out` (default $OUT): `gpu_check.json`
(rewritten after every step, so a run cut short keeps what it measured) and `gpu_check.log`
(every command and its whole output). The data and runs live in `--work` (default a folder
in the temp directory, reused by a rerun on the same machine). Exit status 1 when a step
failed or timed out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's msctr, whatever is installed

from msctr.io import write_json  # noqa: E402
from msctr.recipe import load_recipe  # noqa: E402

MAIN = "recipes/synthetic/table.yaml"  # the README's main job
TABLE3 = "recipes/kuairand/hierrec.yaml"  # HierRec's Tables 2 and 3, on KuaiRand
PAPERS = [
    "kuairand/hierrec.yaml",
    "aliccp/hierrec.yaml",
    "aliccp/sfpnet.yaml",
    "aliccp/hmdn.yaml",
    "aliccp/hmdn_extraction.yaml",
    "kuairand/scenario_wise.yaml",
]
QUICK_PAPERS = ["kuairand/hierrec.yaml", "aliccp/hmdn.yaml"]  # both datasets' prepare paths
RUN_EPOCHS = 4  # a run's epochs in the projection: benchmarks/whole_table.py's default
DEFAULT_BUDGETS = "240,120,60,90"  # 8.5 minutes


@dataclass
class Sizes:
    synthetic_rows: int | None  # None: `msctr prepare synthetic`'s default, as the README
    kuairand_rows: int
    aliccp_rows: int
    main_sets: list[str]  # --set for the main job beyond the device
    bench: list[str]  # bench-inference's timing options
    throughput: list[str]  # train_throughput.py's options


FULL = Sizes(None, 400_000, 100_000, [], ["--repeats", "3"], [])
QUICK = Sizes(
    4_000,
    6_000,
    3_000,
    ["train.seeds=[0,1]", "train.epochs=2"],
    ["--repeats", "1", "--min-time", "0.05", "--rows", "2000"],
    ["--steps", "3", "--warmup", "1", "--threads", "1", "--batch-size", "500"],
)


@dataclass
class Item:
    number: int
    title: str
    seconds: float
    start: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)


@dataclass
class Started:
    name: str
    cmd: list[str]
    proc: subprocess.Popen
    log: Path
    t0: float


class Check:
    """The run's record: every step (command, status, seconds, output's tail) and every
    figure, written to `out` after each step; commands' output to the log."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.out, self.work = args, args.out, args.work
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = self.out / "gpu_check.log"
        self.log.write_text("")
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1",
        }
        self.record: dict = {
            "device": args.device,
            "quick": args.quick,
            "machine": machine(args.device),
            "items": {},
            "summary": [],
        }
        self.failed = False
        self.save()

    def say(self, line: str) -> None:
        print(line, flush=True)
        with self.log.open("a") as f:
            f.write(line + "\n")

    def save(self) -> None:
        write_json(self.out / "gpu_check.json", self.record)

    def item(self, item: Item) -> dict:
        return self.record["items"].setdefault(
            str(item.number), {"title": item.title, "budget_s": item.seconds, "steps": []}
        )

    def summary(self, line: str) -> None:
        self.record["summary"].append(line)
        self.say(f"  -> {line}")
        self.save()

    def skip(self, item: Item, name: str, why: str) -> None:
        self.say(f"[item {item.number}] skipped {name}: {why}")
        self.item(item)["steps"].append({"name": name, "status": "skipped", "why": why})
        self.save()

    def start(self, item: Item, name: str, cmd: list[str]) -> Started | None:
        if item.left() <= 0:
            self.skip(item, name, f"item {item.number}'s budget of {item.seconds:.0f} s is spent")
            return None
        self.say(f"[item {item.number}] {name}: {shlex.join(cmd)}")
        log = self.work / f"step-{len(self.item(item)['steps'])}-{item.number}-{slug(name)}.log"
        with log.open("w") as f:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                cmd, cwd=self.work, env=self.env, stdout=f, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return Started(name, cmd, proc, log, time.monotonic())

    def finish(self, item: Item, started: list[Started | None], expect_fail=False) -> list[dict]:
        """Wait for the steps until the item's budget is spent (then stop them); their
        records, in order (None for a step that was skipped)."""
        steps = []
        for s in started:
            if s is None:
                steps.append(None)
                continue
            timeout = False
            try:
                s.proc.wait(timeout=max(item.left(), 0.1))
            except subprocess.TimeoutExpired:
                timeout = True
                stop(s.proc)
            text = s.log.read_text(errors="replace")
            with self.log.open("a") as f:
                f.write(f"----- output of {s.name} -----\n{text}----- end of {s.name} -----\n")
            rc = s.proc.returncode
            status = "timeout" if timeout else "ok" if (rc != 0) == expect_fail else "failed"
            step = {
                "name": s.name,
                "cmd": shlex.join(s.cmd),
                "status": status,
                "rc": rc,
                "seconds": round(time.monotonic() - s.t0, 2),
                "tail": text[-1500:],
            }
            if status != "ok":
                self.failed = True
                last = text.strip().splitlines()[-1:] or [""]
                self.say(f"[item {item.number}] {s.name}: {status} (exit {rc}): {last[0]}")
            else:
                self.say(f"[item {item.number}] {s.name}: ok, {step['seconds']:.1f} s")
            self.item(item)["steps"].append(step)
            self.save()
            steps.append(step)
        return steps

    def run(self, item: Item, name: str, cmd: list[str], expect_fail=False) -> dict | None:
        return self.finish(item, [self.start(item, name, cmd)], expect_fail)[0]


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the step's process group (msctr stops at a step boundary), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")[:60]


def machine(device: str) -> dict:
    from msctr.bench.machine import machine as describe

    info = describe(torch.device(device) if device != "cpu" else None)
    info["gpus"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
    info["gpu_names"] = [torch.cuda.get_device_name(i) for i in range(info["gpus"])]
    return info


def msctr(*args: str) -> list[str]:
    return [sys.executable, "-m", "msctr", *args]


def ok(step: dict | None) -> bool:
    return step is not None and step["status"] == "ok"


# -- data --------------------------------------------------------------------------------------


def synthetic(check: Check, item: Item, sizes: Sizes) -> Path:
    folder = check.work / "data" / "synthetic"
    if not (folder / "schema.json").is_file():
        rows = [] if sizes.synthetic_rows is None else ["--rows", str(sizes.synthetic_rows)]
        cmd = msctr("prepare", "synthetic", "--out", str(folder), *rows)
        check.run(item, "prepare synthetic", cmd)
    return folder


def paper_data(check: Check, item: Item, recipe_path: str, sizes: Sizes) -> Path | None:
    """Raw files of the recipe's dataset (generated once), prepared with its prepare line."""
    from msctr.testing.rawgen import write_aliccp, write_kuairand

    recipe = load_recipe(ROOT / "recipes" / recipe_path)
    words = shlex.split(recipe.prepare)[1:]  # without "msctr"
    dataset = words[1]
    raw = check.work / "raw" / dataset
    if not raw.is_dir():
        if dataset == "kuairand":
            write_kuairand(raw, rows=sizes.kuairand_rows, scenarios=7, seed=1, history=4)
        else:
            write_aliccp(raw, rows=sizes.aliccp_rows, seed=1, history=4)
    out = check.work / "data" / Path(words[words.index("--out") + 1]).name
    if not (out / "schema.json").is_file():
        words = [str(raw) if w == "RAW" else w for w in words]
        words[words.index("--out") + 1] = str(out)
        if dataset == "kuairand":
            words += ["--raw-dir", str(raw)]
        if not ok(check.run(item, f"prepare {dataset} for {recipe_path}", msctr(*words))):
            return None
    return out


# -- item 1 ------------------------------------------------------------------------------------


def auc_rows(run: Path) -> dict[str, dict]:
    """Per model label: test AUC mean, std and per seed, and the training samples/s of its
    first seed's epochs (from the run's results.json and logs)."""
    res = json.loads((run / "results.json").read_text())
    rows = {}
    for m in res["models"]:
        logs = sorted(run.glob(f"{m['model']}/seed_*/log.jsonl"))
        epochs = [json.loads(x) for x in logs[0].read_text().splitlines()] if logs else []
        rows[m["model"]] = {
            "auc": m["auc"]["mean"],
            "std": m["auc"]["std"],
            "runs": m["auc"]["runs"],
            "samples_per_s": [e["samples_per_s"] for e in epochs],
        }
    return rows


def compare(dev: dict[str, dict], cpu: dict[str, dict]) -> dict[str, dict]:
    """Device vs CPU per model: the difference of mean test AUC against the seeds' noise
    (the standard error of that difference; within noise when under twice it). One seed
    has no noise to compare with: `within_noise` is then None."""
    out = {}
    for label, d in dev.items():
        c = cpu.get(label)
        if c is None:
            continue
        n_d, n_c = len(d["runs"]), len(c["runs"])
        diff = d["auc"] - c["auc"]
        seeds = min(n_d, n_c) > 1 and math.isfinite(c["std"])  # nan: no reference run
        se = math.sqrt(d["std"] ** 2 / n_d + c["std"] ** 2 / n_c) if seeds else None
        out[label] = {
            "auc_device": d["auc"],
            "auc_cpu": c["auc"],
            "std_device": d["std"],
            "std_cpu": c["std"],
            "seeds": n_d,
            "diff": diff,
            "se": se,
            "within_noise": None if se is None else abs(diff) <= max(2 * se, 1e-9),
            "samples_per_s_device": d["samples_per_s"],
            "samples_per_s_cpu": c["samples_per_s"],
        }
    return out


def side_by_side(check: Check, name: str, cmp: dict[str, dict], device: str) -> None:
    parts = []
    for label, c in cmp.items():
        noise = "" if c["se"] is None else (" ~" if c["within_noise"] else " NOT within noise")
        parts.append(f"{label} {c['auc_device']:.4f}/{c['auc_cpu']:.4f}{noise}")
    check.summary(f"{name}: test AUC {device}/cpu: " + ", ".join(parts))


def item_train(check: Check, item: Item, sizes: Sizes) -> None:
    dev = check.args.device
    rec = check.item(item)
    runs = check.work / "runs"
    # each run on the device and, as the reference, on the CPU (a folder of its own also
    # when the device is the CPU, as with --quick here)
    roles = {"device": dev, "cpu": "cpu"}
    names = {"device": f"on {dev}", "cpu": "on cpu (reference)"}

    def train(recipe: str, data: Path, out: Path, role: str, *extra: str) -> list[str]:
        sets = [f"data={data}", f"out={out}", f"train.device={roles[role]}"]
        return msctr("train", str(ROOT / recipe), *[a for s in sets for a in ("--set", s)], *extra)

    # the main job first, on both devices at once: the CPU run is the long pole
    data = synthetic(check, item, sizes)
    main = {"device": runs / f"main-{dev}", "cpu": runs / "main-cpu-ref"}
    more = [a for s in sizes.main_sets for a in ("--set", s)]
    started = [
        check.start(item, f"main job {names[r]}", train(MAIN, data, main[r], r, *more))
        for r in roles
    ]
    rec["papers"] = {}
    for path in QUICK_PAPERS if check.args.quick else PAPERS:  # meanwhile, a pair at a time
        folder = paper_data(check, item, path, sizes)
        if folder is None:
            continue
        out = {r: runs / f"{slug(path)}-{roles[r]}{'-ref' * (r == 'cpu')}" for r in roles}
        recipe = f"recipes/{path}"
        pair = [
            check.start(
                item, f"{path} --smoke {names[r]}", train(recipe, folder, out[r], r, "--smoke")
            )
            for r in roles
        ]
        if all(ok(s) for s in check.finish(item, pair)):
            smoke = {r: Path(f"{o}-smoke") for r, o in out.items()}  # where --smoke writes
            cmp = compare(auc_rows(smoke["device"]), auc_rows(smoke["cpu"]))
            models = [m.key for m in load_recipe(ROOT / recipe).models]
            trained = [m for m in models if m in cmp and math.isfinite(cmp[m]["auc_device"])]
            rec["papers"][path] = {"models": models, "trained": trained, "auc": cmp}
            side_by_side(check, f"{path} --smoke ({len(trained)}/{len(models)} models)", cmp, dev)
    done = dict(zip(roles, check.finish(item, started)))
    if ok(done["device"]):
        got = auc_rows(main["device"])
        ref = auc_rows(main["cpu"]) if ok(done["cpu"]) else {}
        if not ref:  # the device's figures even so
            ref = {k: {**v, "auc": math.nan, "std": math.nan} for k, v in got.items()}
        cmp = compare(got, ref)
        rec["main"] = {"recipe": MAIN, "sets": sizes.main_sets, "auc": cmp}
        side_by_side(check, f"main job {MAIN}", cmp, dev)
        fast = ", ".join(
            f"{k} {mean(c['samples_per_s_device']):,.0f}/{mean(c['samples_per_s_cpu']):,.0f}"
            for k, c in cmp.items()
        )
        check.summary(f"main job training samples/s {dev}/cpu (seed 0's epochs): {fast}")


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


# -- item 2 ------------------------------------------------------------------------------------


def paper_batch_sizes() -> list[int]:
    """Batch 1 (latency) and every paper recipe's training batch size."""
    return sorted({1, *(load_recipe(ROOT / "recipes" / p).train.batch_size for p in PAPERS)})


def bench_summary(check: Check, name: str, path: Path) -> dict:
    """bench.json as written, and a line: per model and variant the whole test split's
    seconds (the papers' Table 3) and the forward's samples/s at the largest batch."""
    b = json.loads(path.read_text())
    parts = []
    for m in b["models"]:
        for variant, v in m["variants"].items():
            if "test_seconds" not in v:
                parts.append(f"{m['model']} {variant} failed: {v.get('error', '?')}")
                continue
            top = v["by_batch_size"][-1]
            parts.append(
                f"{m['model']} {variant} {v['test_seconds']['mean']:.3f} s "
                f"({top['samples_per_s']:,.0f}/s at {top['batch_size']})"
            )
    check.summary(f"{name}, whole test split ({b['test_rows']:,} rows): " + "; ".join(parts))
    return b


def item_bench(check: Check, item: Item, sizes: Sizes) -> None:
    dev = check.args.device
    rec = check.item(item)
    batches = ",".join(map(str, paper_batch_sizes()))
    data = synthetic(check, item, sizes)
    runs = check.work / "runs"
    common = ["--device", dev, "--batch-sizes", batches, *sizes.bench]
    jobs = [("main recipe", MAIN, data, runs / f"main-{dev}", ["--variants", "eager,bf16"])]
    folder = paper_data(check, item, "kuairand/hierrec.yaml", sizes)
    if folder is not None:
        smoke = runs / f"{slug('kuairand/hierrec.yaml')}-{dev}-smoke"
        jobs.append(("HierRec Table 3", TABLE3, folder, smoke, ["--variants", "eager,bf16"]))
        if not check.args.quick:  # torch.compile: Inductor's compile takes minutes on a CPU
            compiled = ["--variants", "compile", "--models", "HierRec", "--batch-sizes", "2000"]
            jobs.append(("HierRec compiled", TABLE3, folder, smoke, compiled))
    rec["bench"] = {}
    for name, recipe, data_dir, run, extra in jobs:
        out = check.work / f"bench-{slug(name)}.json"
        cmd = msctr(
            "bench-inference", str(ROOT / recipe), "--set", f"data={data_dir}",
            "--set", f"out={run}", *common, *extra, "--out", str(out),
        )  # fmt: skip
        # (a later --batch-sizes, the compiled run's, takes the place of the first)
        if ok(check.run(item, f"bench-inference {name}", cmd)):
            rec["bench"][name] = bench_summary(check, f"bench-inference {name} on {dev}", out)
        check.save()


# -- item 3 ------------------------------------------------------------------------------------


def files_of(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


def item_nproc(check: Check, item: Item, sizes: Sizes) -> None:
    dev = check.args.device
    rec = check.item(item)
    gpus = check.record["machine"]["gpus"]
    n = check.args.nproc or (gpus if dev.startswith("cuda") else 2)
    rec["gpus"], rec["nproc"] = gpus, n
    data = synthetic(check, item, sizes)
    epochs = "1" if check.args.quick else "2"
    runs = check.work / "runs"

    def train(out: Path, *extra: str) -> list[str]:
        sets = [f"data={data}", f"out={out}", f"train.device={dev}", "train.seeds=[0]"]
        sets.append(f"train.epochs={epochs}")
        return msctr("train", str(ROOT / MAIN), *[a for s in sets for a in ("--set", s)], *extra)

    if n < 2:
        check.summary(
            f"--nproc: {gpus} GPU on this machine: NCCL across processes needs two; "
            "running --nproc 2 to see it refused instead"
        )
        cmd = train(runs / "nproc-refused", "--nproc", "2")
        step = check.run(item, "--nproc 2 on one GPU", cmd, expect_fail=True)
        if step is not None:
            last = step["tail"].strip().splitlines()[-1:] or [""]
            rec["refusal"] = {"rc": step["rc"], "last_line": last[0]}
            check.summary(f"--nproc 2 on one GPU: exit {step['rc']}: {last[0]}")
        return
    one, many = runs / f"nproc-1-{dev}", runs / f"nproc-{n}-{dev}"
    a = check.run(item, "one process", train(one))
    b = check.run(item, f"--nproc {n}", train(many, "--nproc", str(n)))
    if ok(a) and ok(b):
        x, y = auc_rows(one), auc_rows(many)
        diffs = {k: y[k]["auc"] - x[k]["auc"] for k in x if k in y}
        same = files_of(one) == files_of(many)
        rec["compare"] = {
            "auc_one": {k: v["auc"] for k, v in x.items()},
            "auc_many": {k: v["auc"] for k, v in y.items()},
            "diff": diffs,
            "within_1e-3": {k: abs(d) <= 1e-3 for k, d in diffs.items()},
            "same_files": same,
            "files_only_one": sorted(set(files_of(one)) - set(files_of(many))),
            "files_only_many": sorted(set(files_of(many)) - set(files_of(one))),
        }
        parts = ", ".join(f"{k} {d:+.5f}" for k, d in diffs.items())
        check.summary(
            f"--nproc {n} on {dev} vs one process: test AUC diff {parts}; "
            f"same files in the run folder: {same}"
        )


# -- item 4 ------------------------------------------------------------------------------------


def item_throughput(check: Check, item: Item, sizes: Sizes) -> None:
    from whole_table import FULL_TRAIN_ROWS  # benchmarks/, beside this script

    dev = check.args.device
    rec = check.item(item)
    script = str(ROOT / "benchmarks" / "train_throughput.py")
    data = synthetic(check, item, sizes)
    out = check.work / "throughput.json"
    cmd = [sys.executable, script, "--device", dev, "--data", str(data), "--json", str(out)]
    cmd += sizes.throughput
    if check.args.quick:
        cmd += ["--models", "dnn,hierrec", "--auc-epochs", "1", "--table-rows", "10000"]
    if ok(check.run(item, "train_throughput", cmd)):
        t = json.loads(out.read_text())
        rec["throughput"] = t
        parts = ", ".join(
            f"{r['model']} {r['precision']} {r['samples_per_s']:,.0f}" for r in t["models"]
        )
        check.summary(f"train_throughput on {dev} (samples/s): {parts}")
    folder = paper_data(check, item, "kuairand/hierrec.yaml", sizes)
    if folder is None:
        return
    out = check.work / "throughput-kuairand.json"
    cmd = [sys.executable, script, "--device", dev, "--recipe", str(ROOT / TABLE3)]
    cmd += ["--data", str(folder), "--table-rows", "", "--auc-epochs", "0", "--json", str(out)]
    if not ok(check.run(item, f"train_throughput {TABLE3}", [*cmd, *sizes.throughput])):
        return
    t = json.loads(out.read_text())
    seeds = len(load_recipe(ROOT / TABLE3).train.seeds)
    proj: dict[str, dict] = {}
    for r in t["models"]:
        epoch_s = FULL_TRAIN_ROWS / r["samples_per_s"]
        proj.setdefault(r["precision"], {})[r["label"]] = {
            "samples_per_s": r["samples_per_s"],
            "epoch_s": epoch_s,
            "table_h": epoch_s * RUN_EPOCHS * seeds / 3600,
        }
    rec["kuairand_throughput"] = t
    rec["projection"] = {
        "recipe": TABLE3,
        "train_rows": FULL_TRAIN_ROWS,
        "seeds": seeds,
        "epochs_per_run": RUN_EPOCHS,
        "what": "training steps only (no evaluation, checkpoints or data loading)",
        "by_precision": proj,
        "total_h": {p: sum(m["table_h"] for m in v.values()) for p, v in proj.items()},
    }
    for p, v in proj.items():
        parts = ", ".join(f"{k} {m['epoch_s'] / 60:.1f} min" for k, m in v.items())
        total = rec["projection"]["total_h"][p]
        check.summary(
            f"{TABLE3} at {FULL_TRAIN_ROWS:,} rows, {p}: epoch {parts}; whole table "
            f"({seeds} seeds x {RUN_EPOCHS} epochs, training steps only) {total:.2f} h"
        )


# -- main --------------------------------------------------------------------------------------

ITEMS = {
    1: ("train on the device and on the CPU", item_train),
    2: ("bench-inference on the device", item_bench),
    3: ("data-parallel training (torchrun)", item_nproc),
    4: ("train_throughput on the device, whole-table projection", item_throughput),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (cuda:N) or cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: the whole path in minutes")
    out = os.environ.get("OUT")  # the device machine's folder that comes back
    ap.add_argument("--out", type=Path, default=out and Path(out), help="default: $OUT")
    ap.add_argument("--work", type=Path, help="data and runs (default: TMP/msctr-gpu-check)")
    ap.add_argument("--items", default="1,2,3,4", help="which of issue 31's items, in order")
    ap.add_argument("--budgets", default=DEFAULT_BUDGETS, help="seconds per item 1,2,3,4")
    ap.add_argument("--nproc", type=int, help="processes for item 3 (default: the GPUs)")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(
            f"error: --device {args.device}: no CUDA device is available here; use --device cpu"
        )
    if args.device != "cpu" and not args.device.startswith("cuda"):
        sys.exit(f"error: --device must be cuda, cuda:N or cpu, got {args.device!r}")
    if args.out is None:
        sys.exit("error: give --out DIR (where gpu_check.json and gpu_check.log go), or set $OUT")
    budgets = [float(x) for x in args.budgets.split(",")]
    items = [int(x) for x in args.items.split(",")]
    if len(budgets) != 4 or not set(items) <= set(ITEMS):
        sys.exit("error: --budgets takes 4 numbers (items 1-4), --items a subset of 1,2,3,4")
    import tempfile

    args.out = args.out.resolve()
    tag = "quick" if args.quick else "full"
    args.work = (args.work or Path(tempfile.gettempdir()) / f"msctr-gpu-check-{tag}").resolve()
    check = Check(args)
    sizes = QUICK if args.quick else FULL
    m = check.record["machine"]
    gpu = ", ".join(m["gpu_names"]) or "no GPU"
    cpu = f"{m['cpu']}, {m['logical_cores']} cores, torch {m['torch']}"
    check.say(f"gpu_check: device {args.device}, {gpu}; {cpu}")
    t0 = time.monotonic()
    for number in items:
        title, fn = ITEMS[number]
        item = Item(number, title, budgets[number - 1])
        check.say(f"== item {number}: {title} (budget {item.seconds:.0f} s)")
        try:
            fn(check, item, sizes)
        except Exception as e:  # one item's fault must not cost the others their time
            check.failed = True
            check.item(item)["error"] = f"{type(e).__name__}: {e}"
            check.say(f"[item {number}] error: {type(e).__name__}: {e}")
        check.item(item)["seconds"] = round(time.monotonic() - item.start, 1)
        check.save()
    check.record["seconds"] = round(time.monotonic() - t0, 1)
    check.save()
    print(f"\nsummary ({check.record['seconds']:.0f} s, {args.device}; all in {args.out}):")
    for line in check.record["summary"]:
        print(f"  {line}")
    steps = [s for i in check.record["items"].values() for s in i["steps"]]
    bad = [f"{s['name']} ({s['status']})" for s in steps if s["status"] not in ("ok",)]
    if bad:
        print("not ok: " + "; ".join(bad))
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
