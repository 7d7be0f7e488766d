"""What convert() replaced and what it left alone, one entry per module path."""
import collections


class Replaced(collections.namedtuple("Replaced", "path pattern op")):
    """A layer (or run of layers) that now runs on fastconv's ops.

    path: the module path in the original model (the conv of a conv + BN + ReLU run; for a
    rewritten function call - an add, a torch.cat - the path of the module whose forward
    makes it, "(model)" at the top); pattern: the layers it covers ("1x1 conv + BN + ReLU",
    "relu(1x1 conv + BN + b)", "3x3 conv + BN"); op: what runs them now."""


class Skipped(collections.namedtuple("Skipped", "path reason")):
    """A layer left as it is, and why (a near miss: "grouped conv", "avg pool counts the padding ...")."""


class ConversionReport:
    """`replaced`: a list of Replaced, `skipped`: a list of Skipped, each path at most once in
    either. A later pass that fuses a layer further (an add into a conv's epilogue, sibling
    convs into one GEMM) updates that layer's entry instead of adding one."""

    def __init__(self):
        self.replaced, self.skipped = [], []
        self._sites = collections.Counter()

    def replace(self, path, pattern, op):
        self.skipped = [s for s in self.skipped if s.path != path]
        for i, entry in enumerate(self.replaced):
            if entry.path == path:
                self.replaced[i] = Replaced(path, pattern, op)
                return
        self.replaced.append(Replaced(path, pattern, op))

    def skip(self, path, reason):
        if not any(s.path == path for s in self.skipped):
            self.skipped.append(Skipped(path, reason))

    def site(self, module_path):
        """The name of a function call (add, cat) in the forward of the module at module_path:
        that path, then "path #2", "path #3" for further calls of the same module's forward."""
        name = module_path or "(model)"
        self._sites[name] += 1
        return name if self._sites[name] == 1 else f"{name} #{self._sites[name]}"

    def entry(self, path):
        """The Replaced entry of a path, or None."""
        return next((r for r in self.replaced if r.path == path), None)

    def counts(self):
        """How many entries each pattern has."""
        return collections.Counter(r.pattern for r in self.replaced)

    def __str__(self):
        lines = [f"fastconv.convert: {len(self.replaced)} replaced, {len(self.skipped)} left alone"]
        lines += [f"  replaced  {r.path}: {r.pattern} -> {r.op}" for r in self.replaced]
        lines += [f"  left      {s.path}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)
