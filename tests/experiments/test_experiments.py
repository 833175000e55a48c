"""The experiment frame (components/experiments/base.py): results files, MLflow logging, the CLI list."""

from __future__ import annotations

from pathlib import Path

from components.experiments.base import ExperimentContext, ExperimentResult, fmt, mean_std, write_results


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
