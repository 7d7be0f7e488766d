"""The report of fastconv.compare: one row per shared layer boundary (or per parameter
gradient), a text table, JSON, and the comparison of two saved reports."""
import json
import math

import torch


def error_stats(err, ref):
    """max/mean/p50/p99 of |err|, the same of |err| / |ref| (where ref != 0), and the
    norm-wise ||err|| / ||ref||, as floats (err, ref: float64 tensors)."""
    err, ref = err.flatten().abs(), ref.flatten()
    stats = {"norm_rel": _div(err.norm().item(), ref.norm().item())}
    nonzero = ref != 0
    # where ref == 0, a 0 stands in for the relative error: no real one is smaller, so the
    # quantiles of the rest are the same ranks moved up by that many (no boolean-mask copy)
    rel = torch.where(nonzero, err / ref.abs(), 0.0)
    for name, values, n in (("abs", err, err.numel()), ("rel", rel, int(nonzero.sum()))):
        if n == 0:
            values, n = torch.zeros(1, dtype=err.dtype), 1
        stats[f"max_{name}"] = values.max().item()
        stats[f"mean_{name}"] = values.sum().item() / n
        ranks = [values.numel() - n + max(1, math.ceil(q / 100 * n)) - 1 for q in (50, 99)]  # nearest rank
        # one numpy selection pass for both, in place (values is this function's own; NaN sorts
        # last, as in torch.kthvalue, which selects one rank per pass, on a copy, 2-20x slower)
        selected = values.cpu().numpy()
        selected.partition(ranks)
        stats["p50_" + name], stats["p99_" + name] = (float(selected[r]) for r in ranks)
    return stats


def _div(a, b):
    return a / b if b > 0 else (0.0 if a == 0 else math.inf)


class Row:
    """One boundary (kind "layer"), the model's output, or one parameter's gradient
    (kind "grad"). `own`: the candidate's layer on the reference's input against the exact
    result (error it creates), `total`: the candidate's value against the reference's, as
    each model computed it (error it creates plus what it inherited); `ratio`: worst
    own error / tolerance (pass <= 1), `eager_ratio`: the same for the reference's own value."""

    FIELDS = ("name", "kind", "span", "level", "fused_as", "ops", "kernels", "own", "total",
              "tolerance", "ratio", "worst_at", "eager_ratio", "passed", "note")

    def __init__(self, **fields):
        for f in self.FIELDS:
            setattr(self, f, fields.get(f))
        self.ops = self.ops or []
        self.kernels = self.kernels or []

    def to_dict(self):
        return {f: getattr(self, f) for f in self.FIELDS}


class Report:
    """rows, passed, first_failure (the reference's module path of the first failing layer,
    or parameter name, or None), meta (models, dtype, precision, device, ...);
    str(report) is the table, to_json() / Report.from_json() save and load it."""

    def __init__(self, rows, meta, first_failure=None):
        self.rows, self.meta = rows, meta
        self.first_failure = first_failure
        self.passed = all(r.passed is not False for r in rows)

    def failing_row(self):
        return next((r for r in self.rows if r.name == self.first_failure), None)

    def to_json(self, path=None):
        text = json.dumps({"meta": self.meta, "passed": self.passed, "first_failure": self.first_failure,
                           "rows": [r.to_dict() for r in self.rows]}, indent=1, default=str,
                          allow_nan=True)
        if path is not None:
            with open(path, "w") as f:
                f.write(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path):
        text = text_or_path
        if not text.lstrip().startswith("{"):
            with open(text_or_path) as f:
                text = f.read()
        data = json.loads(text)
        return cls([Row(**r) for r in data["rows"]], data["meta"], data["first_failure"])

    def _head(self):
        m = self.meta
        return (f"fastconv.compare: {m.get('candidate')} vs {m.get('reference')}, {m.get('mode')}, "
                f"{m.get('precision')} on {m.get('device')} (backend {m.get('backend')}), inputs "
                f"{', '.join(m.get('inputs', []))}; tolerance: {m.get('tolerance')}")

    def _verdict(self):
        failing = self.failing_row()
        if failing is None:
            return f"PASSED: {len(self.rows)} rows within tolerance"
        where = "" if failing.worst_at in (None, "output") else f" at the {failing.worst_at}"
        failed = sum(r.passed is False for r in self.rows)
        return (f"FAILED ({failed} of {len(self.rows)} rows): first failing layer {failing.name} "
                f"({failing.span}): own error{where} {failing.ratio:.3g}x its tolerance; {_replacement(failing)}")

    def __str__(self):
        return "\n".join([self._head(), _table(self.rows), self._verdict()])

    def failure_summary(self):
        """The verdict, then the table of the failing rows only (for an assertion message)."""
        return "\n".join([self._verdict(), self._head(), _table([r for r in self.rows if r.passed is False])])

    def diff(self, other):
        """A table comparing this report (A) with another (B) row by row: own/tol and the
        output's relative error in each, and which rows changed status."""
        theirs = {r.name: r for r in other.rows}
        out = [f"A: {self.meta.get('candidate')} {self.meta.get('precision')} on {self.meta.get('device')}"
               f" ({self.meta.get('backend')});  B: {other.meta.get('candidate')} "
               f"{other.meta.get('precision')} on {other.meta.get('device')} ({other.meta.get('backend')})"]
        width = max([len(r.name) for r in self.rows] + [5])
        out.append(f"{'layer':<{width}}  own/tol A  own/tol B  out rel A  out rel B  status")
        for r in self.rows:
            o = theirs.pop(r.name, None)
            status = _status(r) if o is None or _status(o) == _status(r) else f"{_status(r)} -> {_status(o)}"
            out.append(f"{r.name:<{width}}  {_num(r.ratio):>9}  {_num(o and o.ratio):>9}  "
                       f"{_num(r.total and r.total['norm_rel']):>9}  "
                       f"{_num(o and o.total and o.total['norm_rel']):>9}  {status}")
        out += [f"{name:<{width}}  {'':>9}  {_num(o.ratio):>9}  {'':>9}  "
                f"{_num(o.total and o.total['norm_rel']):>9}  only in B" for name, o in theirs.items()]
        return "\n".join(out)


def _status(row):
    return {True: "ok", False: "FAIL", None: "unchecked"}[row.passed]


def _num(v):
    return "-" if v is None else f"{v:.1e}"


def _replacement(row):
    if not row.kernels:
        return f"replaced by: {row.fused_as}"
    parts = []
    for k in row.kernels:
        text = f"{k['op']} on {k['backend']}" if "backend" in k else f"{k['op']} (not covered by fastconv.explain)"
        if k.get("triton_config"):
            text += f" config {k['triton_config']}"
        parts.append(text)
    return f"replaced by: {row.fused_as}; ran " + "; ".join(parts)


def _table(rows):
    """out: the candidate's value against the reference's (each model on its own input);
    own: the candidate's layer on the reference's input against the exact result; tol: the
    tolerance at the worst element; eager/tol: the reference's own value, judged alike."""
    cols = [("layer", 0), ("fused as", 0), ("out max|err|", 12), ("out rel", 8), ("own max|err|", 12),
            ("tol", 8), ("own/tol", 8), ("eager/tol", 9), ("", 4)]
    names = ["  " * (r.level or 0) + r.name for r in rows]
    fused = [(r.fused_as or "-").split(" -> ")[0][:40] for r in rows]  # the pattern; the op: in JSON
    w0, w1 = max([len(n) for n in names] + [5]), max([len(f) for f in fused] + [8])
    header = f"{'layer':<{w0}}  {'fused as':<{w1}}  " + "  ".join(f"{c:>{w}}" for c, w in cols[2:])
    lines = [header, "-" * len(header)]
    for r, name, f in zip(rows, names, fused):
        total, own = r.total or {}, r.own or {}
        lines.append(f"{name:<{w0}}  {f:<{w1}}  " + "  ".join(
            f"{v:>{w}}" for v, w in zip((_num(total.get("max_abs")), _num(total.get("norm_rel")),
                                          _num(own.get("max_abs")), _num(r.tolerance), _num(r.ratio),
                                          _num(r.eager_ratio), _status(r)), [w for _, w in cols[2:]])))
    return "\n".join(lines)
