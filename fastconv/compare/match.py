"""Which layer boundaries a reference and a candidate model share, and which tensor of the
reference each candidate output stands for.

A module path called the same number of times in both forwards is shared; its k-th calls
are paired (convert keeps module paths, and fastconv.models keeps torchvision's). A fused
layer sits at the path of the first layer it replaced (a 1x1 conv + BN + ReLU at the conv's
path) and its output stands for the reference's output at the end of the layers it absorbed.
That end is found from the data flow, not from names:
  1. the candidate's output goes into a later shared call Q: it stands for the reference's
     input of Q at the same position (the conv2 after a fused conv1 + bn1 + relu reads the
     reference's relu output);
  2. otherwise (it only feeds a fused op, or glue code such as an add): the reference's output
     of the same call, of one of the reference calls after it whose paths never run in the
     candidate (absorbed layers: the BN after a fused projection conv), or of a module around
     it that the candidate inlined (a block whose add went into the conv's epilogue),
     whichever the candidate's value is nearest (an absorbed BN or add changes a value by far
     more than any rounding or bug that still lets the layer pass for what it replaced).
Each pair becomes a Boundary: one row of the report.
"""
import collections

from fastconv.compare.record import Ref


class Output(collections.namedtuple("Output", "position cand ref where")):
    """One value a boundary computes: its position among the candidate call's tensor outputs
    (an int), or, for an enclosing boundary, "input of <path>" (what its own code passes to a
    boundary inside it); the candidate's and the reference's Refs; and where the replay reads
    the reference's value: ("leave", call, leaf) at the end of a reference call or
    ("enter", call, input) at the start of one."""

    def seq(self):
        """When the reference computed it (its place in the recording's sequence)."""
        kind, call, _ = self.where
        return call.end if kind == "leave" else call.start


class Boundary:
    """A shared call: the candidate's and the reference's Call, the outputs matched, the
    reference path where its span ends, and its level (shared calls around it)."""

    def __init__(self, cand, ref, outputs, end_path):
        self.cand, self.ref, self.outputs, self.end_path = cand, ref, outputs, end_path
        self.level = 0

    @property
    def name(self):
        return self.ref.path or "(model)"

    def span(self):
        name = self.name
        return name if self.end_path in (None, self.ref.path) else f"{name} .. {self.end_path}"


def _shape_of(rec, ref):
    value = rec.values[ref]
    return value.shape, value.dtype


def boundaries(ref_rec, cand_rec):
    """The Boundaries of the two recordings, in the candidate's call order, and a map from
    each candidate tensor with a counterpart to the reference's Ref."""
    ref_counts = collections.Counter(c.path for c in ref_rec.calls)
    cand_counts = collections.Counter(c.path for c in cand_rec.calls)
    ref_by_index = {(c.path, c.index): c for c in ref_rec.calls}
    pairs = [(c, ref_by_index[(c.path, c.index)]) for c in cand_rec.calls
             if ref_counts[c.path] == cand_counts[c.path]]
    counterpart = dict(zip(cand_rec.inputs, ref_rec.inputs))
    for c, r in pairs:  # inputs of shared calls, position by position
        for kc, kr in zip(c.inputs(), r.inputs()):
            if _shape_of(cand_rec, kc) == _shape_of(ref_rec, kr):
                counterpart.setdefault(kc, kr)
    flow = _Flow(ref_rec, cand_rec, pairs, set(cand_counts))
    found = []
    for c, r in pairs:
        if _passes_through(c) and _passes_through(r):  # nn.Identity, Dropout in eval
            continue
        outputs, end = [], None
        cand_outputs = [leaf for leaf in c.outputs if isinstance(leaf, Ref)]
        for i, kc in enumerate(cand_outputs):
            match = flow.counterpart(c, r, i, kc)
            if match is not None and _shape_of(cand_rec, kc) == _shape_of(ref_rec, match[0]):
                outputs.append(Output(i, kc, *match))
                kind, call, _ = match[1]
                end = end or (call.path if kind == "leave" else f"(input of {call.path})")
        if outputs:
            found.append(Boundary(c, r, outputs, end))
            for o in outputs:
                counterpart.setdefault(o.cand, o.ref)
    for b in found:  # nesting is the candidate's: a fused layer may call a module (timm's
        b.level = sum(b.cand.inside(other.cand) for other in found)  # BN-act's SiLU) it absorbed
    for b in found:  # an enclosing boundary's own work ends at the inputs of those inside it too
        for child in found:
            if child.level == b.level + 1 and child.cand.inside(b.cand):
                for j, (kc, kr) in enumerate(zip(child.cand.inputs(), child.ref.inputs())):
                    if _shape_of(cand_rec, kc) == _shape_of(ref_rec, kr):
                        label = f"input of {child.name}" + (f" [{j}]" if len(child.ref.inputs()) > 1 else "")
                        b.outputs.append(Output(label, kc, kr, ("enter", child.ref, j)))
    return found, counterpart


def _passes_through(call):
    outs = [o for o in call.outputs if isinstance(o, Ref)]
    return bool(outs) and all(o in call.inputs() for o in outs)


class _Flow:
    def __init__(self, ref_rec, cand_rec, pairs, cand_paths):
        self.ref_rec, self.cand_rec, self.cand_paths = ref_rec, cand_rec, cand_paths
        self.pair_of = {id(c): r for c, r in pairs}
        self.cand_readers = collections.defaultdict(list)  # cand Ref -> [(shared call, input)]
        for c, _ in pairs:
            for j, k in enumerate(c.inputs()):
                self.cand_readers[k].append((c, j))
        self.ref_first_readers = collections.defaultdict(list)  # ref Ref -> calls reading it first
        self.ref_producers = collections.defaultdict(list)  # ref Ref -> calls that returned it
        for call in ref_rec.calls:  # in start order: outermost first
            ins = call.inputs()
            if ins:
                self.ref_first_readers[ins[0]].append(call)
            for leaf in call.outputs:
                if isinstance(leaf, Ref):
                    self.ref_producers[leaf].append(call)

    def producer(self, kr, r):
        """The outermost call that returned kr, among those that start with r or later (the
        calls of boundaries nested in r are not run in r's replay: r's own end is read)."""
        return next((p for p in self.ref_producers.get(kr, ()) if p.start >= r.start), None)

    def counterpart(self, c, r, i, kc):
        """(ref Ref, where) for the candidate output kc (the i-th of c), or None."""
        for q, j in self.cand_readers.get(kc, ()):  # rule 1
            if q.start > c.end:
                rq = self.pair_of[id(q)]
                ins = rq.inputs()
                if j >= len(ins):
                    continue
                kr = ins[j]
                producer = self.producer(kr, r)
                if producer is not None:
                    return kr, ("leave", producer, producer.outputs.index(kr))
                return kr, ("enter", rq, j)
        outs = [leaf for leaf in r.outputs if isinstance(leaf, Ref)]  # rule 2
        if i >= len(outs):
            return None
        chain, kr, end = [(outs[i], r)], outs[i], r
        while True:
            nxt = next((x for x in self.ref_first_readers.get(kr, ()) if x.start > end.end
                        and x.path not in self.cand_paths and len(x.outputs) == 1), None)
            if nxt is None or not isinstance(nxt.outputs[0], Ref):
                break
            kr, end = nxt.outputs[0], nxt
            chain.append((kr, end))
        parent = r.parent  # modules the candidate inlined: their glue (an add) may be fused too
        while parent is not None and parent.path not in self.cand_paths:
            chain += [(leaf, parent) for leaf in parent.outputs if isinstance(leaf, Ref)]
            parent = parent.parent
        kr, end = min(chain, key=lambda link: self._distance(kc, link[0]))
        end = self.producer(kr, r) or end
        return kr, ("leave", end, end.outputs.index(kr))

    def _distance(self, kc, kr):
        """How far the candidate's value is from a reference value (relative), inf if their
        shapes differ: which of the layers that no longer run a fused layer's output stands for
        (a 1x1 conv + BN fused by position in an nn.Sequential runs no module either: its
        layers are not the shared call's)."""
        a, b = self.cand_rec.values[kc], self.ref_rec.values[kr]
        if a.shape != b.shape or a.dtype != b.dtype:
            return float("inf")
        return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()
