"""torchvision is an extra (`fastconv[models]`): every fastconv module but fastconv.models
imports without it, and fastconv.models says which extra to install."""
import subprocess
import sys

# In a fresh interpreter where torchvision cannot be imported (a None entry in sys.modules
# makes `import torchvision` fail and find_spec report it missing, as when not installed).
WITHOUT_TORCHVISION = """
import pkgutil, sys
sys.modules["torchvision"] = None
import fastconv
names = [m.name for m in pkgutil.walk_packages(fastconv.__path__, "fastconv.")
         if not m.name.startswith("fastconv.models") and not m.name.endswith("__main__")]
for name in names:
    __import__(name)
print(" ".join(names))
try:
    import fastconv.models
except ImportError as e:
    print("models:", e)
"""


def test_only_models_needs_torchvision():
    out = subprocess.run([sys.executable, "-c", WITHOUT_TORCHVISION], check=True, capture_output=True,
                         text=True).stdout
    imported, models = out.splitlines()
    assert {"fastconv.ops.conv1x1", "fastconv.nn", "fastconv.convert", "fastconv.reference", "fastconv.bench.zoo",
            "fastconv.demo", "fastconv.info"} <= set(imported.split())
    assert models.startswith("models: fastconv.models builds on torchvision's model classes")
    assert "pip install 'fastconv[models]'" in models
