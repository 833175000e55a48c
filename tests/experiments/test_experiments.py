"""The experiment frame (components/experiments/base.py): results files, MLflow logging, the CLI list."""

from __future__ import annotations

from pathlib import Path

import math

import numpy as np

from components.experiments.base import (Difference, ExperimentContext, ExperimentResult, auc_gain, fmt, mean_std,
                                         refresh_results, write_results)
from components.training.intervals import Interval


def _result(name: str, verdict: str, auc: str) -> ExperimentResult:
    return ExperimentResult(name=name, title=f"{name} title", claim="a claim", columns=["model", "AUC"],
                            rows=[{"model": "a", "AUC": auc}], verdict=verdict, finding=f"AUC {auc}",
                            command=f"adsrec experiment {name}")


def test_write_results_keeps_other_sections_and_updates_the_summary(tmp_path: Path) -> None:
    path = tmp_path / "results.md"
    write_results(_result("ipw", "reproduced", "0.61 ± 0.01"), path)
    write_results(_result("collapse", "not reproduced", "0.55 ± 0.02"), path)
    write_results(_result("ipw", "partly", "0.62 ± 0.01"), path)  # a re-run replaces its own section only
    text = path.read_text()
    assert text.count("## ipw title") == 1 and "0.62 ± 0.01" in text and "0.61 ± 0.01" not in text
    assert "## collapse title" in text and "0.55 ± 0.02" in text
    assert "| [ipw](#ipw) | partly | AUC 0.62 ± 0.01 |" in text
    assert "| [collapse](#collapse) | not reproduced |" in text and "| [temporal](#temporal) | not run |" in text
    assert text.index("## collapse title") < text.index("## ipw title")  # issue order, not run order
    assert "`adsrec experiment ipw`" in text
    write_results(_result("temporal", "partly", "mean |c - 1| 0.07"), path)  # a pipe must not split the cell
    assert "| [temporal](#temporal) | partly | AUC mean \\|c - 1\\| 0.07 |" in path.read_text()
    # a hand-written section after the experiments' survives a re-run and a refresh
    path.write_text(path.read_text() + '\n<a id="interest"></a>\n\n## Interest features\n\nA gain.\n')
    write_results(_result("ipw", "reproduced", "0.63 ± 0.01"), path)
    refresh_results(path)
    text = path.read_text()
    assert text.count("## Interest features") == 1 and text.rstrip().endswith("A gain.") and "0.63 ± 0.01" in text
    assert "**Protocol (issue 12).**" in text and "validation" in text


def test_a_run_with_an_option_is_a_section_of_its_own_beside_the_default_run(tmp_path: Path) -> None:
    from components.experiments.base import Experiment

    seen: list[dict] = []

    def run(ctx: ExperimentContext) -> ExperimentResult:
        seen.append(dict(ctx.options))
        return _result("temporal", "partly", f"0.6{len(seen)}")

    exp = Experiment(name="temporal", title="temporal title", claim="a claim", run=run,
                     options={"strength": ("default", "strong")})
    ctx = ExperimentContext(name="temporal", settings=None, progress=lambda _line: None)  # type: ignore[arg-type]
    default = exp(ctx)
    strong = exp(ExperimentContext(name="temporal", settings=None, options={"strength": "strong"}))  # type: ignore[arg-type]
    assert seen == [{"strength": "default"}, {"strength": "strong"}]  # options left out take their defaults
    assert default.name == "temporal" and strong.name == "temporal__strength_strong"
    assert strong.title == "temporal title (strength strong)"
    path = tmp_path / "results.md"
    write_results(strong, path)
    write_results(_result("ipw", "reproduced", "0.61 ± 0.01"), path)
    write_results(default, path)
    text = path.read_text()
    assert text.index("## temporal title\n") < text.index("## temporal title (strength strong)") < text.index("## ipw")
    assert "| [temporal](#temporal) | partly | AUC 0.61 |" in text
    assert "| [temporal__strength_strong](#temporal__strength_strong) | partly | AUC 0.62 |" in text
    assert "| [ipw](#ipw) |" in text.split("temporal__strength_strong")[2]  # summary in the same order
    for given, message in (({"strength": "huge"}, "strength must be one of default, strong, got 'huge'"),
                           ({"size": "big"}, "has no option 'size' (its options: strength)")):
        try:
            exp.resolve_options(given)
        except ValueError as exc:
            assert message in str(exc)
        else:
            raise AssertionError(f"{given} accepted")


def test_mean_std_and_fmt() -> None:
    mean, std = mean_std([0.5, 0.7])
    assert abs(mean - 0.6) < 1e-12 and abs(std - 0.1414) < 1e-4  # sample std (ddof 1) over seeds
    assert mean_std([0.5]) == (0.5, 0.0)
    assert fmt(*mean_std([float("nan")])) == "-"
    assert fmt(0.61234, 0.0012) == "0.6123 ± 0.0012"


def test_log_run_goes_to_one_mlflow_experiment_per_comparison(settings) -> None:
    from components.registry.client import mlflow_client

    lines: list[str] = []
    ctx = ExperimentContext(name="ipw", settings=settings, progress=lines.append)
    ctx.log_run("stem/seed0", {"arch": "stem"}, {"auc": 0.6, "nan": float("nan")})
    ctx.log_run("stem/seed1", {"arch": "stem"}, {"auc": 0.7})
    with mlflow_client(settings) as client:
        exp = client.get_experiment_by_name("adsrec-exp-ipw")
        runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.metrics["auc"] for r in runs) == [0.6, 0.7]
    assert all("nan" not in r.data.metrics for r in runs)
    assert lines[0].startswith("[ipw] stem/seed0: auc 0.6000")


def test_write_results_keeps_the_hand_written_sections_after_the_experiments(tmp_path: Path) -> None:
    path = tmp_path / "results.md"
    write_results(_result("ipw", "reproduced", "0.61 ± 0.01"), path)
    bench = '<a id="interest"></a>\n\n## A bench result written by hand\n\n| a | b |\n|---|---|\n| 1 | 2 |\n'
    path.write_text(path.read_text() + "\n" + bench)
    write_results(_result("learning_curve", "partly", "0.85 of the oracle"), path)
    write_results(_result("ipw", "partly", "0.62 ± 0.01"), path)
    text = path.read_text()
    assert text.count("## A bench result written by hand") == 1 and "| 1 | 2 |" in text
    assert text.index("## ipw title") < text.index("## learning_curve title") < text.index("## A bench result")
    assert "| [learning_curve](#learning_curve) | partly | AUC 0.85 of the oracle |" in text


def test_experiment_list_names_every_experiment() -> None:
    from typer.testing import CliRunner

    from components.experiments import NAMES
    from flows.cli.main import app

    res = CliRunner().invoke(app, ["experiment", "--list"])
    assert res.exit_code == 0, res.output
    assert len(NAMES) == 7 and all(f"{n} " in res.output for n in NAMES)
    assert res.output.count("claim:") == 7
    bad = CliRunner().invoke(app, ["experiment", "nope"])
    assert bad.exit_code == 2 and "no experiment 'nope'" in bad.output
    for args, message in ((["temporal", "--option", "strength=huge"], "must be one of default, strong"),
                          (["temporal", "--option", "strength"], "--option takes KEY=VALUE"),
                          (["ipw", "--option", "strength=strong"], "has no option 'strength'")):
        bad = CliRunner().invoke(app, ["experiment", *args])
        assert bad.exit_code == 2 and message in bad.output, (args, bad.output)


def test_a_difference_counts_only_beyond_the_wider_of_interval_and_seed_spread() -> None:
    narrow_seeds = Difference(0.010, 0.001, Interval(0.010, 0.002, 0.018))
    assert narrow_seeds.above() and not narrow_seeds.below() and narrow_seeds.word() == "above 0"
    wide_seeds = Difference(0.010, 0.020, Interval(0.010, 0.002, 0.018))  # the seeds disagree: noise
    assert not wide_seeds.above() and not wide_seeds.below() and wide_seeds.word() == "within the noise"
    assert Difference(-0.010, 0.001, Interval(-0.010, -0.018, -0.002)).below()
    assert not Difference(0.010, 0.0, Interval(0.010, -0.001, 0.020)).above()  # the interval reaches 0
    undefined = Difference(0.5, 0.0, Interval(0.5, math.nan, math.nan))
    assert not undefined.above() and not undefined.below() and "[undefined]" in str(undefined)
    assert str(narrow_seeds) == "+0.0100 ± 0.0010 [+0.0020, +0.0180]"
    assert narrow_seeds.to_dict()["verdict"] == "above 0"


def test_auc_gain_is_the_seed_mean_of_paired_differences_with_an_interval_over_users() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    users = rng.integers(0, 300, 6000)
    taste = rng.normal(0, 1, 300)[users] + rng.normal(0, 1, users.size)
    y = (rng.random(users.size) < 1 / (1 + np.exp(-taste))).astype(float)
    good = [taste + rng.normal(0, 0.5, y.size) for _ in range(3)]
    poor = [taste + rng.normal(0, 2.0, y.size) for _ in range(3)]
    gain = auc_gain(y, good, poor, users)
    per_seed = [roc_auc_score(y, g) - roc_auc_score(y, p) for g, p in zip(good, poor)]
    assert math.isclose(gain.mean, float(np.mean(per_seed)), abs_tol=1e-9)
    assert math.isclose(gain.interval.point, gain.mean, abs_tol=1e-9) and gain.above()
    same = auc_gain(y, good, good, users)
    assert same.mean == 0.0 and same.word() == "within the noise"
    half = users < 150  # a slice: only its rows and users
    sliced = auc_gain(y, good, poor, users, rows=half)
    assert math.isclose(sliced.mean, float(np.mean([roc_auc_score(y[half], g[half]) - roc_auc_score(y[half], p[half])
                                                    for g, p in zip(good, poor)])), abs_tol=1e-9)


def test_simulated_market_splits_train_validation_and_test_by_day(settings, shared_data: Path) -> None:
    import pyarrow as pa

    from components.experiments.data import CONFLICT_SIMULATOR_SMALL, simulated_market

    market = simulated_market(settings, CONFLICT_SIMULATOR_SMALL, days=4)

    def days(table: pa.Table) -> set[int]:
        micros = table["event_time"].cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
        return set((micros // 86_400_000_000).tolist())

    train, valid, test = days(market.train), days(market.valid), days(market.test)
    assert len(train) == 2 and len(valid) == 1 and len(test) == 1
    assert max(train) < min(valid) < min(test)  # validation (choices) is never the reported test day
    assert market.valid_batch["labels"].shape == (market.valid.num_rows, 2)
    assert market.truth is not None and len(market.truth["click"]) == market.test.num_rows
    assert market.split_text().startswith("days 1-2 train") and "day 3 validates" in market.split_text()
    assert "day 4 tests, untouched" in market.split_text()
