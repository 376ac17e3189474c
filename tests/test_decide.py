"""The decision: A or B for a deployment, from runs written here with known effects. The
recommendation follows the decided traffic and the profile's weights, broken evidence is shown and
the next strongest used, runs that disagree are a conflict, the budget picks the fastest recipe
that meets it, a capture is placed on the dose axes, every claim recomputes from the cells it cites
(by an implementation of its own here), and bad input gets one line and exit 2."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ffnbench.bench.analysis import decision, evidence
from ffnbench.bench.analysis.deployment import Deployment, deployment_from_table, parse_budget
from ffnbench.bench.analysis.mechanisms import PREDICTION
from ffnbench.bench.cli import main
from ffnbench.bench.report import decision as render
from ffnbench.bench.store import RunStore
from ffnbench.errors import UsageError

WINDOWS, SEEDS = 16, 3
DRIFT = {"positive_mean_fraction": 0.9, "abs_mean_shift_std": 2.0, "token_mean_energy": 0.6, "rms_spread": 1.0}


def lm_cell(design, recipe, scenario, seed, kl, pair="drift", top1=0.995, cost=0.0, study="downstream",
            stats=None, flips=0.01, neg=1.0):
    rng = np.random.default_rng(hash((design, recipe, scenario, seed)) % 2**32)
    noise = rng.uniform(0.9, 1.1, WINDOWS)
    metrics = {"kl_to_fp32": kl, "delta_bpb": cost, "bits_per_byte": 1.8 + cost, "same_top1": top1,
               "norm_positive_fraction": 0.52 if design == "A" else 0.93, "spike_ratio": 4.0 if design == "A" else 9.0,
               "preact_sign_flip_rate": flips * (1 + 0.05 * seed), "act_err_small_neg": neg * (1 + 0.02 * seed),
               "act_err_small_pos": 1.0}
    out = {"key": f"{design}/{pair}-s{seed}/{recipe}/{study}/{scenario}", "kind": "lm", "status": "ok",
           "design": design, "model": f"{pair}-s{seed}", "pair": pair, "seed": seed, "study": study,
           "recipe": recipe, "scenario": scenario, "calibration": None, "inject": "ffn-input", "draws": 4,
           "reference": {"bits_per_byte": 1.8 + cost, "delta_bpb": cost, "order0_bits_per_byte": 4.7},
           "metrics": metrics,
           "windows": {"kl_to_fp32": list(kl * noise), "delta_bpb": list(np.full(WINDOWS, cost)),
                       "same_top1": list(np.full(WINDOWS, top1))}}
    err = 0.3 if (design, recipe) == ("A", "torch-fp16") else 1e-3
    out["layers"] = {"norm_out_rel_err": [err, err], "act_in_rel_err": [2 * err, 2 * err],
                     "down_in_rel_err": [3 * err, 3 * err]}
    if recipe == "fp32":
        out["drift_stats"] = [dict(stats or DRIFT) for _ in range(2)]
        out["layers"]["half_norm_overflow"] = [0.1, 0.05] if design == "A" else [0.0, 0.0]
    return out


def pair(effects: dict, pair_name="drift", broken=(), top1=None) -> list[dict]:
    """fp32 and quantized cells of both designs, three seeds; effects: (recipe, scenario) -> (A KL, B KL)."""
    top1 = top1 or {}
    scenarios = dict.fromkeys(s for _, s in effects)
    cells = [lm_cell(d, "fp32", s, seed, 0.0, pair_name, cost=0.3 if s in broken else 0.01)
             for d in "AB" for s in scenarios for seed in range(SEEDS)]
    for (recipe, scenario), kl in effects.items():
        for i, design in enumerate("AB"):
            cells += [lm_cell(design, recipe, scenario, seed, kl[i], pair_name, top1.get((design, recipe), 0.995),
                              cost=0.3 if scenario in broken else 0.01, neg=1.5 if design == "B" else 1.0,
                              flips=0.02 if design == "B" else 0.01) for seed in range(SEEDS)]
    return cells


def sublayer(design, recipe, scenario, noise_level):
    rng = np.random.default_rng(hash((design, recipe, scenario)) % 2**32)
    return {"key": f"{design}/default/{recipe}/{scenario}/cal=-", "kind": "accuracy", "status": "ok",
            "design": design, "model": "default", "recipe": recipe, "scenario": scenario, "calibration": None,
            "artifact": {"bytes": 1000}, "metrics": {"centered_sqnr_db": 30.0},
            "requests": {"centered_noise": list(noise_level * rng.uniform(0.9, 1.1, 8)),
                         "centered_signal": list(np.full(8, 100.0))}}


def timed(design, recipe, shape, ms, group="g1"):
    rng = np.random.default_rng(hash((design, recipe, shape)) % 2**32)
    samples = list(ms * rng.uniform(0.95, 1.05, 20))
    p50 = float(np.median(samples))
    return {"key": f"{design}/default/{recipe}/{shape}", "kind": "latency", "status": "ok", "design": design,
            "model": "default", "recipe": recipe, "scenario": "production", "calibration": None,
            "shape": {"name": shape}, "metrics": {"p50_ms": p50, "samples_ms": samples, "timing_group": group,
                                                  "model_bytes": 1000, "resident_mb": 3.0,
                                                  "p50_ci_low_ms": p50 * 0.99, "p50_ci_high_ms": p50 * 1.01}}


def write_run(path, cells, machine_class="cpu-test", variants=None) -> str:
    store = RunStore(path, {"preset": "test", "downstream": {"healthy_delta_bpb": 0.1}, "device": "cpu",
                            "user_recipes": variants or {}}, resume=False, machine={"machine_class": machine_class})
    for c in cells:
        store.append(c)
    return str(path)


# A wins int8-dynamic and int4 under both scenarios, B wins fp16.
EFFECTS = {(r, s): kl for s in ("clean", "production") for r, kl in
           (("ort-int8-dynamic", (1e-3, 2e-3)), ("ort-int4-rtn", (1e-2, 2e-2)), ("torch-fp16", (2e-3, 1e-5)))}
SERVED = {"int8-dynamic": 1, "int4": 1, "fp16": 1}


def decide(run_dirs, families=SERVED, budget=None, capture=None):
    profile, _ = deployment_from_table({"families": families} if families else {}, "test")
    return decision.decide(evidence.load_runs(run_dirs), profile, parse_budget(budget), capture)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    cells = pair(EFFECTS) + [timed(d, r, shape, ms) for d in "AB" for r, ms in
                             (("ort-int8-dynamic", 1.0), ("ort-int4-rtn", 0.8), ("torch-fp16", 3.0))
                             for shape in ("prefill", "decode")]
    return write_run(tmp_path_factory.mktemp("runs") / "base", cells)


def test_the_recommendation_follows_the_decided_traffic_and_names_what_would_change_it(base_run):
    found = decide([base_run])
    rows = {(r["family"], r["scenario"]): r for r in found["rows"]}
    assert rows["int8-dynamic", "production"]["winner"] == "A" and rows["fp16", "production"]["winner"] == "B"
    assert rows["fp16", "clean"]["evidence_kind"] == "drift-trained pair"
    assert found["recommendation"] == "A"
    assert found["confidence"]["A_share"] == pytest.approx(2 / 3)
    assert found["confidence"]["B_share"] == pytest.approx(1 / 3)
    # fp16 gives B all its weight, the rest A: B leads once fp16 carries more than half the traffic
    assert any("fp16 carrying more than 50%" in c for c in found["change_if"])
    weighted = decide([base_run], families={"int8-dynamic": 0.1, "int4": 0.1, "fp16": 0.8})
    assert weighted["recommendation"] == "B" and weighted["confidence"]["B_share"] == pytest.approx(0.8)


def test_broken_evidence_is_shown_and_the_next_strongest_is_used(tmp_path):
    cells = pair(EFFECTS, broken=("production",))
    cells += [sublayer(d, "ort-int8-dynamic", "production", level) for d, level in (("A", 1.0), ("B", 3.0))]
    found = decide([write_run(tmp_path / "run", cells)])
    rows = {(r["family"], r["scenario"]): r for r in found["rows"]}
    int8 = rows["int8-dynamic", "production"]
    assert int8["evidence_kind"] == "sublayers" and int8["winner"] == "A"
    assert [e["verdict"] for e in int8["stronger"]] == ["broken"] and "0.30" in int8["stronger"][0]["reason"]
    assert rows["int4", "production"]["winner"] == "broken"  # no sublayer cells of it: nothing to fall back on
    assert found["confidence"]["broken_share"] == pytest.approx(2 / 6)
    assert any("under production, int4, fp16: broken" in u for u in found["unknowns"])
    flips = {(f["family"], f["scenario"]): f for f in found["flips"]}
    assert flips["fp16", "clean"]["counted"]  # B wins it
    assert not flips["fp16", "production"]["counted"] and "0.30" in flips["fp16", "production"]["reason"]
    assert ("int8-dynamic", "production") not in flips  # its broken evidence points A's way


def test_runs_that_disagree_at_one_strength_are_a_conflict_not_an_average(tmp_path, base_run):
    opposite = {k: (b, a) for k, (a, b) in EFFECTS.items()}
    other = write_run(tmp_path / "other", pair(opposite))
    found = decide([base_run, other])
    rows = {(r["family"], r["scenario"]): r for r in found["rows"]}
    assert rows["int8-dynamic", "clean"]["winner"] == "conflict"
    assert {e["verdict"] for e in rows["int8-dynamic", "clean"]["used"]} == {"A", "B"}
    assert found["confidence"]["none_share"] == pytest.approx(1.0) and found["recommendation"] == "none"


def test_the_budget_picks_the_fastest_recipe_that_meets_it(tmp_path):
    top1 = {("A", "ort-int4-rtn"): 0.95, ("B", "ort-int4-rtn"): 0.95, ("A", "torch-fp16"): 0.999,
            ("B", "torch-fp16"): 0.999, ("A", "ort-int8-dynamic"): 0.995, ("B", "ort-int8-dynamic"): 0.995}
    cells = pair(EFFECTS, top1=top1) + [timed(d, r, shape, ms * (1.5 if d == "A" else 1.0)) for d in "AB"
                                        for r, ms in (("ort-int8-dynamic", 1.0), ("ort-int4-rtn", 0.8),
                                                      ("torch-fp16", 3.0)) for shape in ("prefill", "decode")]
    run = write_run(tmp_path / "run", cells)

    def picked(budget):
        rows = decide([run], budget=budget)["cost_at_budget"]
        return {(r["design"], r["scenario"]): r for r in rows}

    loose = picked("same_top1>=0.99")  # int4 misses it; int8 is the fastest that meets it
    assert loose["A", "production"]["recipe"] == "ort-int8-dynamic" and loose["B", "clean"]["recipe"] == \
        "ort-int8-dynamic"
    assert picked("same_top1>=0.998")["A", "production"]["recipe"] == "torch-fp16"
    assert picked("same_top1>=0.9")["A", "production"]["recipe"] == "ort-int4-rtn"
    assert picked("same_top1>=0.9999")["A", "production"]["recipe"] is None
    found = decide([run], budget="same_top1>=0.99")
    ratio = found["claims"][next(r["claims"]["prefill_ratio"] for r in found["cost_at_budget"] if r["design"] == "A/B")]
    assert ratio["figure"] == pytest.approx(1.5, rel=0.1) and ratio["ci95"][0] > 1  # A timed 1.5x slower


def test_a_flip_shows_where_the_error_enters_and_the_variant_that_closes_it(tmp_path, base_run):
    """fp16 flips to B; A's fp16 error is at its norm output already and its fp32 states overflow an
    fp16 norm; A with the norm in fp32 (a [recipe] variant, measured in a second run) matches B."""
    fix = {(r, s): kl for (r, s), kl in EFFECTS.items() if r == "torch-fp16"}
    fix |= {("torch-fp16-norm32", s): (1e-5, 1e-5) for _, s in fix}
    second = write_run(tmp_path / "fix", pair(fix), variants={"torch-fp16-norm32": {"base": "torch-fp16",
                                                                                   "norm_fp32": True}})
    found = decide([base_run, second])
    (flip, *_) = [f for f in found["flips"] if f["scenario"] == "production"]
    assert flip["family"] == "fp16" and flip["winner"] == "B"
    claims = found["claims"]
    mechanism = flip["mechanism"]
    assert claims[mechanism["stages"]["A"]["norm_out_rel_err"]]["figure"] == pytest.approx(0.3)
    assert claims[mechanism["overflow"]["A"]]["figure"] == pytest.approx(0.075) and \
        claims[mechanism["overflow"]["B"]]["figure"] == 0
    assert flip["fix"]["recipe"] == "torch-fp16-norm32" and flip["fix"]["against"] == "no difference"
    assert flip["fix"]["run"] == "fix" and claims[flip["fix"]["claim"]]["figure"] == pytest.approx(1.0, rel=0.2)
    records = all_records([base_run, second])
    for claim in claims:
        assert recompute(claim, records) == pytest.approx(claim["figure"], rel=1e-9), claim["text"]
    memo = render.markdown(json.loads(json.dumps(found, sort_keys=True)))  # as decision.json holds it
    assert "A 0.30 [0.30, 0.30] / 0.60 [0.60, 0.60] / 0.90 [0.90, 0.90]" in memo  # the FFN's order, not the keys'
    assert "A's error is already larger at the norm output" in memo


def test_cells_without_figures_are_left_out_not_a_crash(tmp_path):
    """Non-finite logits leave a cell without windows; an empty band leaves act_err_small_* None."""
    cells = pair(EFFECTS)
    for c in cells:
        if c["design"] == "A" and c["recipe"] == "torch-fp16" and c["seed"] == 2:
            c["windows"] = None
            c["metrics"]["nonfinite_rate"] = 0.1
        if c["recipe"] == "ort-int8-dynamic" and c["seed"] == 1:
            c["metrics"]["act_err_small_pos"] = None
    run = write_run(tmp_path / "run", cells)
    found = decide([run])
    records = all_records([run])
    flip = next(f for f in found["flips"] if f["family"] == "fp16")
    assert len(found["claims"][flip["mechanism"]["kl"]["A"]]["cells"]) == 2  # the seed without windows left out
    assert all(records[ref].get("windows") for c in found["claims"] if c["field"].startswith("windows.")
               for ref in c["cells"])
    band = found["mechanisms"]["prediction"]["parts"][1]
    assert len(found["claims"][band["A"]]["cells"]) == 2
    for claim in found["claims"]:
        assert recompute(claim, records) == pytest.approx(claim["figure"], rel=1e-9), claim["text"]


def test_a_run_with_nothing_to_compare_is_all_unmeasured(tmp_path):
    run = write_run(tmp_path / "run", [timed(d, "fp32", "prefill", 1.0) for d in "AB"])
    found = decide([run])
    assert found["recommendation"] == "none" and found["confidence"]["unmeasured_share"] == 1.0
    assert found["rows"] == [] and "no scenario of the profile" in found["unknowns"][0]
    memo = render.markdown(found)
    assert "| family |" not in memo and "## The seed's prediction" not in memo and "100% unmeasured" in memo


def test_the_memo_stays_one_page_for_every_family_and_many_scenarios(tmp_path):
    scenarios = ("clean", "production", "massive", "domain-code", "shift-1", "magnitude-2")
    recipes = ("ort-int8-dynamic", "ort-int8-qdq-minmax", "bnb-int8", "ort-int4-rtn", "bnb-nf4", "ort-fp4",
               "torch-fp16", "torch-bf16")
    effects = {(r, s): (1e-3, 2e-3) if r != "torch-fp16" else (2e-3, 1e-5) for r in recipes for s in scenarios}
    found = decide([write_run(tmp_path / "run", pair(effects, broken=("production",)))], families=None)
    assert len(found["rows"]) == 8 * 6 and len(render.markdown(found).splitlines()) <= 100


def test_whole_models_of_both_designs_are_compared_and_a_broken_one_is_said(tmp_path):
    def whole(design, model, kl, cost=0.01):
        c = lm_cell(design, "ort-int8-dynamic", "production", 0, kl, cost=cost)
        return {**c, "kind": "whole", "model": model, "key": f"{model}/ort-int8-dynamic/production"}

    alone = decide([write_run(tmp_path / "alone", [whole("B", "llama", 3e-3)])], families={"int8-dynamic": 1})
    assert alone["rows"][0]["winner"] == "unmeasured" and any("design B only (llama)" in u for u in alone["unknowns"])
    run = write_run(tmp_path / "run", [whole("A", "gpt2", 1e-3), whole("B", "llama", 3e-3)])
    (row,) = [r for r in decide([run], families={"int8-dynamic": 1})["rows"] if r["scenario"] == "production"]
    assert row["evidence_kind"] == "whole models" and row["winner"] == "A"
    broken = write_run(tmp_path / "broken", [whole("A", "gpt2", 1e-3), whole("B", "llama", 3e-3, cost=0.5)])
    (row,) = decide([broken], families={"int8-dynamic": 1})["rows"]
    assert row["winner"] == "broken" and "llama loses +0.50" in row["stronger"][0]["reason"]


def cell_value(cell: dict, field: str) -> float:
    """A claim's field read off one record, independently of the analysis' own reader."""
    if field == "requests.centered_error":
        return sum(cell["requests"]["centered_noise"]) / sum(cell["requests"]["centered_signal"])
    if "/" in field:
        top, bottom = field.split("/")
        return cell_value(cell, top) / cell_value(cell, bottom)
    section, name = field.split(".")
    if section == "drift_stats":
        return sum(layer[name] for layer in cell["drift_stats"]) / len(cell["drift_stats"])
    value = cell[section][name]
    return sum(value) / len(value) if isinstance(value, list) else value


def recompute(claim: dict, records: dict) -> float:
    cells = [records[ref] for ref in claim["cells"]]
    if claim["statistic"] == "geomean_ratio":
        pairs = zip(cells[:claim["split"]], cells[claim["split"]:], strict=True)
        return float(np.exp(np.mean([np.log(cell_value(a, claim["field"]) / cell_value(b, claim["field"]))
                                     for a, b in pairs])))
    if claim["statistic"] == "median_ratio":
        a, b = (c["metrics"]["samples_ms"] for c in cells)
        n = min(len(a), len(b))
        return float(np.median(a[:n]) / np.median(b[:n]))
    values = [cell_value(c, claim["field"]) for c in cells]
    top, bottom = values[:claim["split"]] if claim["split"] else [], values[claim["split"]:] if claim["split"] else []
    return {"ratio": lambda: np.mean(top) / np.mean(bottom), "difference": lambda: np.mean(top) - np.mean(bottom),
            "mean": lambda: np.mean(values), "max": lambda: max(values),
            "mean_of_ratios": lambda: np.mean(values)}[claim["statistic"]]()


def all_records(run_dirs) -> dict:
    out = {}
    for run in evidence.load_runs(run_dirs):
        out |= {run.ref(c): c for c in run.cells}
    return out


def test_every_claim_recomputes_from_the_cells_it_cites(tmp_path, base_run):
    cells = pair(EFFECTS, broken=("production",)) + [sublayer(d, r, s, level) for s in ("clean", "production")
                                                     for r in ("ort-int8-dynamic", "ort-int4-rtn")
                                                     for d, level in (("A", 1.0), ("B", 2.0))]
    runs = [base_run, write_run(tmp_path / "second", cells)]
    found = decide(runs)
    records = all_records(runs)
    assert len(found["claims"]) > 20
    kinds = {c["statistic"] for c in found["claims"]}
    assert {"ratio", "mean", "median_ratio", "mean_of_ratios", "geomean_ratio"} <= kinds
    for claim in found["claims"]:
        assert claim["cells"], claim["text"]
        assert recompute(claim, records) == pytest.approx(claim["figure"], rel=1e-9), claim["text"]
        if claim["ci95"]:
            assert claim["ci95"][0] <= claim["figure"] <= claim["ci95"][1], claim["text"]


def test_the_memo_is_one_page_and_opens_with_the_recommendation(base_run):
    found = decide([base_run])
    memo = render.markdown(found)
    lines = memo.splitlines()
    assert len(lines) <= 100
    assert lines[2].startswith("Recommendation: **Design A**") and lines[3].startswith("Confidence: the evidence "
                                                                                          "decides 100%")
    assert "## Where it flips" in memo and "fp16 under `production`: B wins" in memo
    sections = [line for line in lines if line.startswith("## ")]
    assert sections.index("## Per served format × scenario") < sections.index("## Mechanism 1: normalisation") < \
        sections.index("## The seed's prediction") < sections.index("## Where it flips")


def test_the_prediction_is_stated_before_and_judged_by_the_measurement(base_run):
    prediction = decide([base_run])["mechanisms"]["prediction"]
    assert prediction["statement"] == PREDICTION  # fixed text, whatever the runs say
    flips, bands = prediction["parts"]
    assert flips["held"] is True and bands["held"] is True  # B built with twice A's flips, 1.5x its band ratio


def test_a_capture_is_placed_between_the_dose_levels_it_falls_between(tmp_path):
    cells = []
    for level, shift in (("clean", 0.0), ("shift-1", 1.0), ("shift-2", 2.0), ("shift-4", 4.0)):
        for d in "AB":
            cost = 0.3 if d == "B" and shift >= 2 else 0.01
            cells += [lm_cell(d, "fp32", level, s, 0.0, "trained", cost=cost, study="dose",
                              stats={**DRIFT, "abs_mean_shift_std": shift * 0.5}) for s in range(SEEDS)]
    run = write_run(tmp_path / "run", cells)
    capture = tmp_path / "mine.json"
    capture.write_text(json.dumps({"kind": "ffnbench.capture", "layers": {
        "0": {"abs_mean_shift_std": 0.7, "rms_spread": 0.1}, "3": {"abs_mean_shift_std": 0.7, "rms_spread": 0.1}}}))
    placed = decide([run], capture=capture)["traffic"]
    (shift,) = [a for a in placed["axes"] if a["axis"] == "shift"]
    assert [r["scenario"] for r in shift["nearest"]] == ["shift-1", "shift-2"]
    assert shift["nearest"][0]["health"] == {"A": True, "B": True} and shift["nearest"][1]["health"] == \
        {"A": True, "B": False}
    assert "A stays healthy and B does not" in shift["reading"]


@pytest.mark.parametrize("spec, error", [("same_top1>=0.99", None), ("kld_mean<=1e-3", None),
                                         ("perplexity<=3", "unknown metric 'perplexity'"),
                                         ("same_top1=0.99", "is not METRIC>=X")])
def test_budgets_parse_or_are_refused_with_the_fix(spec, error):
    if error is None:
        budget = parse_budget(spec)
        assert budget.stated and budget.met(0.995 if budget.op == ">=" else 1e-4)
    else:
        with pytest.raises(UsageError, match=error):
            parse_budget(spec)


def test_a_profile_normalises_its_shares_and_refuses_an_unknown_family():
    profile, budget = deployment_from_table({"families": {"int8-dynamic": 3, "fp16": 1}, "budget": "kld_mean<=0.01"},
                                            "t")
    assert profile.families == {"int8-dynamic": 0.75, "fp16": 0.25} and budget.metric == "kld_mean"
    assert sum(Deployment().families.values()) == pytest.approx(1.0) and not Deployment().stated
    with pytest.raises(UsageError, match="unknown family 'int3'"):
        deployment_from_table({"families": {"int3": 1}}, "t")


def run_cli(*args):
    """The console script in a subprocess: the one test that runs it whole."""
    return subprocess.run([sys.executable, "-m", "ffnbench", "decide", *args], capture_output=True, text=True)


def run_main(capsys, *args) -> tuple[int, str]:
    """cli.main in this process (exit code, stderr): what the console script calls, without a
    second torch import for each bad input."""
    code = main(["decide", *map(str, args)])
    return code, capsys.readouterr().err


def test_decide_writes_the_memo_and_its_json(tmp_path, base_run):
    out = tmp_path / "memo"
    done = run_cli(base_run, "--out", str(out), "--budget", "kld_mean<=0.01")
    assert done.returncode == 0, done.stderr
    written = json.loads((out / "decision.json").read_text())
    assert written["budget"]["metric"] == "kld_mean" and written["recommendation"] == "A"
    assert (out / "decision.md").read_text().splitlines()[2] == render.headline(written)[0]


@pytest.mark.parametrize("case", ["family", "budget", "not-a-run", "not-a-capture", "capture-dir", "budget-number",
                                  "infinite-share", "unknown-scenario", "twice", "several-without-out", "out-is-file"])
def test_bad_input_gets_one_line_exit_2_and_nothing_written(tmp_path, base_run, case, capsys):
    out = tmp_path / "memo"
    profile = tmp_path / "deploy.toml"
    profile.write_text({"budget-number": "[deployment]\nbudget = 0.99\n",
                        "infinite-share": "[deployment]\nfamilies = {fp16 = inf}\n",
                        "unknown-scenario": "[deployment]\nscenarios = [\"prodution\"]\n"}.get(
        case, "[deployment]\nfamilies = {int3 = 1.0}\n"))
    not_capture = tmp_path / "notes.json"
    not_capture.write_text(json.dumps({"kind": "ffnbench.run"}))
    (tmp_path / "file").write_text("")
    deployment = [base_run, "--deployment", str(profile), "--out", str(out)]
    args = {"family": deployment, "budget-number": deployment, "infinite-share": deployment,
            "unknown-scenario": deployment, "budget": [base_run, "--budget", "ppl<=3", "--out", str(out)],
            "not-a-run": [str(tmp_path), "--out", str(out)],
            "not-a-capture": [base_run, "--traffic", str(not_capture), "--out", str(out)],
            "capture-dir": [base_run, "--traffic", str(tmp_path), "--out", str(out)],
            "twice": [base_run, base_run, "--out", str(out)], "several-without-out": [base_run, base_run],
            "out-is-file": [base_run, "--out", str(tmp_path / "file")]}[case]
    before = sorted(p.name for p in Path(base_run).iterdir())
    code, err = run_main(capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and sorted(p.name for p in Path(base_run).iterdir()) == before
