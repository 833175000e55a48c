"""The house rules of docs/architecture.md hold: module and function sizes, no private name across modules,
no import circle, validation/ imports only models/ (bench/house.py)."""

from __future__ import annotations

from pathlib import Path

from bench.house import House, inspect, main

REPO = Path(__file__).resolve().parents[2]


def test_the_house_rules_hold(capsys) -> None:
    code = main([])
    out = capsys.readouterr().out
    assert "largest modules" in out and "largest functions" in out
    assert code == 0, out


def test_the_checker_finds_each_kind_of_breach(tmp_path: Path) -> None:
    pkg = tmp_path / "components"
    pkg.mkdir()
    (tmp_path / "flows").mkdir()
    (tmp_path / "validation").mkdir()
    (pkg / "a.py").write_text("from components.b import _hidden\n" + "x = 1\n" * 401)
    (pkg / "b.py").write_text("def _hidden():\n    from components import a\n" + "    y = 1\n" * 80)
    (tmp_path / "validation" / "v.py").write_text("from components.a import x\n")
    breaches = "\n".join(inspect(tmp_path).breaches())
    assert "module components/a.py has 402 lines" in breaches
    assert "function components/b.py:1 _hidden has 82 lines" in breaches
    assert "private name imported across modules: components/a.py:1 from components.b import _hidden" in breaches
    assert "import circle: components.a -> components.b -> components.a" in breaches
    assert "validation/ imports outside models/: validation/v.py:1 imports components.a" in breaches


def test_the_repository_is_what_the_checker_reads() -> None:
    house = inspect(REPO)
    assert isinstance(house, House)
    assert any(p.startswith("components/training/") for _, p in house.modules)
