"""The ranking objective of the scoring service: a small arithmetic expression over the task probabilities
and the online row's numeric columns, e.g. ``click * bid`` (expected revenue per impression under CPC) or
``0.7 * click + 0.3 * conversion`` (a task weighting).

Names: a task (``click``) or ``p_<task>`` is that task's probability; ``bid`` is ``ad_profile__bid``; any other
name must be a numeric column of the row (``ad_stats__click_rate_7d``, ``see_text``, ...). Operators: ``+ - *
/ **``, unary minus, numbers, parentheses. Nothing else parses (no calls, attributes or subscripts), so an
objective from a request body cannot run code. Python's ``ast`` does the parsing; the evaluation is numpy over
all candidates at once. A null input gives a NaN score, and NaN ranks last.
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

ALIASES = {"bid": "ad_profile__bid"}
_BINARY: dict[type, Callable[[Any, Any], Any]] = {ast.Add: operator.add, ast.Sub: operator.sub,
                                                  ast.Mult: operator.mul, ast.Div: operator.truediv,
                                                  ast.Pow: operator.pow}
MAX_LENGTH = 500


class ObjectiveError(ValueError):
    """An objective that does not parse or names a column the rows do not have."""


@dataclass(frozen=True)
class Objective:
    """A parsed objective: its text, the tree and the row columns it reads."""

    text: str
    tree: ast.Expression
    names: tuple[str, ...]

    def columns(self, tasks: tuple[str, ...]) -> dict[str, str]:
        """Name in the expression -> the column of the scored rows it reads."""
        out = {}
        for name in self.names:
            if name in tasks:
                out[name] = f"p_{name}"
            else:
                out[name] = ALIASES.get(name, name)
        return out

    def evaluate(self, values: Mapping[str, np.ndarray], tasks: tuple[str, ...], n: int) -> np.ndarray:
        """float64 [n] scores; ``values`` maps row columns to float arrays (NaN for null)."""
        columns = self.columns(tasks)
        missing = sorted({c for c in columns.values() if c not in values})
        if missing:
            raise ObjectiveError(f"objective {self.text!r} reads {missing}, which the scored rows do not have "
                                 f"(tasks: {list(tasks)}; numeric columns: {sorted(k for k in values)[:20]}...)")
        env = {name: np.asarray(values[col], dtype=np.float64) for name, col in columns.items()}
        with np.errstate(all="ignore"):
            out = _eval(self.tree.body, env)
        return np.broadcast_to(np.asarray(out, dtype=np.float64), (n,)).copy()


def parse_objective(text: str) -> Objective:
    """Parse and check ``text`` (see the module docstring); raises :class:`ObjectiveError` naming the problem."""
    if not isinstance(text, str) or not text.strip():
        raise ObjectiveError("the objective is empty: give an expression such as 'click' or 'click * bid'")
    if len(text) > MAX_LENGTH:
        raise ObjectiveError(f"the objective is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ObjectiveError(f"the objective {text!r} does not parse: {exc.msg}") from None
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.append(node.id)
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                raise ObjectiveError(f"the objective {text!r} uses {type(node.op).__name__}; allowed: + - * / **")
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.USub, ast.UAdd)):
                raise ObjectiveError(f"the objective {text!r} uses {type(node.op).__name__}; allowed: unary -")
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float)) or isinstance(node.value, bool):
                raise ObjectiveError(f"the objective {text!r} has a constant {node.value!r}; only numbers are allowed")
        elif not isinstance(node, (ast.Expression, ast.Load, ast.operator, ast.unaryop)):
            raise ObjectiveError(f"the objective {text!r} uses {type(node).__name__}: only names, numbers, "
                                 "+ - * / ** and parentheses are allowed")
    if not names:
        raise ObjectiveError(f"the objective {text!r} names no task or column")
    return Objective(text=text.strip(), tree=tree, names=tuple(dict.fromkeys(names)))


def _eval(node: ast.AST, env: Mapping[str, np.ndarray]) -> Any:
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, env)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_eval(node.left, env), _eval(node.right, env))
    raise ObjectiveError(f"cannot evaluate {type(node).__name__}")  # parse_objective rejects it first


def rank_order(scores: np.ndarray) -> np.ndarray:
    """Indices of ``scores`` best first; NaN last; ties keep the request's order (stable)."""
    key = np.where(np.isnan(scores), -np.inf, scores)
    return np.argsort(-key, kind="stable")
